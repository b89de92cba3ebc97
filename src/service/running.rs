//! [`RunningService`]: a started service, until stopped or dropped.

use async_nats::service::Service;
use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::client::{Client, Operation};
use crate::nats::service::Info;
use crate::Error;

use super::error::{CallError, CallErrorKind};

/// A service instance answering requests. Dropping it stops answering at
/// once (requests in flight are abandoned); [`stop`](Self::stop) drains them.
#[derive(Debug)]
pub struct RunningService {
    /// `None` only once stopping began.
    service: Option<Service>,
    /// `$SRV.INFO.{name}.{id}`: this instance's discovery subject.
    info_subject: String,
    nats: async_nats::Client,
    endpoints: Vec<JoinHandle<()>>,
}

impl RunningService {
    /// The running service, once the server routes requests to it.
    pub(crate) async fn new(
        client: &Client,
        service: Service,
        nats: async_nats::Client,
        endpoints: Vec<JoinHandle<()>>,
    ) -> Result<Self, async_nats::RequestError> {
        let own = service.info().await;
        let running = Self {
            info_subject: format!("$SRV.INFO.{}.{}", own.name, own.id),
            service: Some(service),
            nats,
            endpoints,
        };
        running.routed(client).await?;
        Ok(running)
    }

    /// Returns once the server has read the endpoints' subscriptions. They
    /// are written to the connection, but async-nats' flush does not wait
    /// for the server to read them: a caller elsewhere asking right away
    /// could be told there are no responders. The server reads a
    /// connection's operations in order, so once this instance's own INFO
    /// request (sent after them) is answered through the server, every
    /// endpoint is routed to. A user who may not publish to `$SRV.INFO`
    /// subjects starts without that proof, as services did before, rather
    /// than waiting for the request's timeout.
    async fn routed(&self, client: &Client) -> Result<(), async_nats::RequestError> {
        let mut violations = client.permission_violations();
        let answered = self.nats.request(self.info_subject.clone(), Bytes::new());
        let denied = async {
            loop {
                match violations.recv().await {
                    Ok(violation)
                        if violation.operation == Operation::Publish
                            && violation.subject == self.info_subject =>
                    {
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            biased;
            answer = answered => answer.map(drop),
            () = denied => {
                tracing::debug!(
                    subject = %self.info_subject,
                    "may not publish the service's own INFO request; started without \
                     waiting for the server to route to its endpoints"
                );
                Ok(())
            }
        }
    }

    /// What `$SRV.INFO` answers for this instance: its id, name, version and
    /// endpoints with their metadata. Asks the server, as any client would.
    pub async fn info(&self) -> Result<Info, CallError> {
        let reply = self
            .nats
            .request(self.info_subject.clone(), Bytes::new())
            .await
            .map_err(|err| Error::with_source(CallErrorKind::Request, err))?;
        serde_json::from_slice(&reply.payload)
            .map_err(|err| Error::with_source(CallErrorKind::Undecodable, err))
    }

    /// Stops taking requests, lets those in flight answer, then returns.
    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            // Unsubscribes every endpoint: their request streams end.
            let _ = service.stop().await;
        }
        for endpoint in self.endpoints.drain(..) {
            let _ = endpoint.await;
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            // `Service::stop` does all its work before its first await point.
            let _ = service.stop().now_or_never();
        }
        for endpoint in &self.endpoints {
            endpoint.abort();
        }
    }
}
