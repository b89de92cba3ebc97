//! The ack queue's bookkeeping: slots, answers, timeouts and hand-over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

/// Acks without a subscription, with slots due `after` from now.
fn acks_with(after: &[u64]) -> Acks {
    let mut acks = Acks {
        first: 0,
        slots: VecDeque::new(),
        unanswered: 0,
        subscription: None,
        deadline: None,
        reader: None,
        subjects: MessageBuffer::for_subjects(),
    };
    let now = Instant::now();
    for secs in after {
        acks.push(now + Duration::from_secs(*secs));
    }
    acks
}

/// Counts the wakes of the wakers made from it.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Wakes {
    fn counted() -> (Waker, Arc<Wakes>) {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        (Waker::from(wakes.clone()), wakes)
    }

    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn an_ack_finds_its_sender_by_number_and_only_once() {
    let mut acks = acks_with(&[10, 10, 10]);
    let reader = Waker::noop();
    acks.answer(1, Ok(reply("{}")), reader);
    assert!(acks.take(1).is_some());
    assert!(acks.take(1).is_none(), "answered twice");
    assert_eq!(acks.slots.len(), 3, "an answer behind the front is kept");
    acks.answer(0, Ok(reply("{}")), reader);
    assert!(acks.take(0).is_some());
    assert_eq!(acks.first, 2, "taken front slots are dropped");
    acks.answer(7, Ok(reply("{}")), reader);
    assert!(acks.take(7).is_none(), "a number never sent");
}

#[test]
fn replies_from_one_buffer_stay_distinct_and_find_their_senders() {
    let mut acks = acks_with(&[10; 40]);
    let prefix = "_INBOX.abc.7.";
    let replies: Vec<Subject> = (0..40).map(|n| acks.reply_subject(prefix, n)).collect();
    for (n, reply) in replies.iter().enumerate() {
        assert_eq!(reply.as_str(), format!("{prefix}{n}"));
    }
    // Answered out of order, each with its own number as the payload.
    for subject in replies.iter().rev() {
        let number = reply_number(subject).unwrap();
        let message = Message {
            subject: subject.clone(),
            payload: Bytes::from(number.to_string()),
            ..reply("")
        };
        acks.answer(number, Ok(message), Waker::noop());
    }
    for n in 0..40 {
        let message = acks.take(n).unwrap().unwrap();
        assert_eq!(message.payload, n.to_string().as_bytes());
        assert_eq!(message.subject.as_str(), format!("{prefix}{n}"));
    }
}

fn reply(payload: &'static str) -> Message {
    Message {
        subject: "_INBOX.x.1".into(),
        reply: None,
        payload: Bytes::from_static(payload.as_bytes()),
        headers: None,
        status: None,
        description: None,
        length: payload.len(),
    }
}

#[test]
fn reads_acks_and_errors_as_async_nats_does() {
    let ack = read_ack(&reply(r#"{"stream":"ORDERS","seq":42,"duplicate":true}"#)).expect("ack");
    assert_eq!(
        (ack.stream.as_str(), ack.sequence, ack.duplicate),
        ("ORDERS", 42, true)
    );
    let err = read_ack(&reply(
        r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}}"#,
    ))
    .expect_err("wrong last sequence");
    assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
    assert!(err.to_string().contains("wrong last sequence: 7"), "{err}");
    let err = read_ack(&reply(
        r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
    ))
    .expect_err("other error");
    assert_eq!(err.kind(), PublishErrorKind::Other);
    let mut no_responders = reply("");
    no_responders.status = Some(StatusCode::NO_RESPONDERS);
    assert_eq!(
        read_ack(&no_responders).expect_err("no stream").kind(),
        PublishErrorKind::StreamNotFound
    );
}

/// Reads `acks` once with `waker`, as a polled ack future does.
fn read_with(acks: &mut Acks, waker: &Waker) {
    acks.read(&mut Context::from_waker(waker));
}

#[tokio::test(start_paused = true)]
async fn reading_times_out_only_the_overdue_and_wakes_their_owners() {
    let mut acks = acks_with(&[3, 3, 5]);
    let (owner, wakes) = Wakes::counted();
    let (reader, _) = Wakes::counted();
    for number in 0..3 {
        if let Some(Slot::Waiting { owner: slot, .. }) = acks.slot(number) {
            *slot = Some(owner.clone());
        }
    }
    tokio::time::advance(Duration::from_secs(3)).await;
    read_with(&mut acks, &reader);
    assert!(matches!(acks.take(0), Some(Err(NoAck::TimedOut))));
    assert!(matches!(acks.take(1), Some(Err(NoAck::TimedOut))));
    assert!(acks.take(2).is_none(), "not yet due");
    assert_eq!(wakes.count(), 2, "each timed-out owner is woken");
    acks.answer(0, Ok(reply("{}")), &reader);
    assert!(
        acks.take(0).is_none(),
        "a late ack after its timeout finds nobody"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    read_with(&mut acks, &reader);
    assert!(matches!(acks.take(2), Some(Err(NoAck::TimedOut))));
}

#[tokio::test(start_paused = true)]
async fn the_shared_timer_wakes_the_reader_at_the_oldest_deadline() {
    let mut acks = acks_with(&[3, 5]);
    let (reader, wakes) = Wakes::counted();
    read_with(&mut acks, &reader);
    tokio::time::advance(Duration::from_secs(3)).await;
    tokio::task::yield_now().await;
    assert_eq!(wakes.count(), 1, "woken when the first is due");
    read_with(&mut acks, &reader);
    assert!(matches!(acks.take(0), Some(Err(NoAck::TimedOut))));
    assert!(acks.take(1).is_none());
}

#[test]
fn a_leaving_reader_hands_reading_over_to_another_owner() {
    let mut acks = acks_with(&[10, 10, 10]);
    let (first, _) = Wakes::counted();
    let (second, second_wakes) = Wakes::counted();
    for (number, owner) in [(1, &first), (2, &second)] {
        if let Some(Slot::Waiting { owner: slot, .. }) = acks.slot(number) {
            *slot = Some(owner.clone());
        }
    }
    acks.reader = Some(first.clone());
    acks.hand_over(&second);
    assert_eq!(second_wakes.count(), 0, "only the reader hands over");
    acks.hand_over(&first);
    assert_eq!(second_wakes.count(), 1, "the other owner takes over");
    assert!(acks.reader.is_none());
}

#[test]
fn closing_answers_every_waiting_sender() {
    let mut acks = acks_with(&[10, 10]);
    let (owner, wakes) = Wakes::counted();
    if let Some(Slot::Waiting { owner: slot, .. }) = acks.slot(1) {
        *slot = Some(owner);
    }
    acks.close();
    assert!(matches!(acks.take(0), Some(Err(NoAck::Closed))));
    assert!(matches!(acks.take(1), Some(Err(NoAck::Closed))));
    assert_eq!(wakes.count(), 1);
}
