//! The bank account aggregate of the event sourcing examples.

use jetevents::eventstore::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: i64,
}

#[derive(Serialize, Deserialize)]
pub enum AccountEvent {
    #[serde(rename = "opened.v1")]
    Opened,
    #[serde(rename = "deposited.v1")]
    Deposited { amount: i64 },
    #[serde(rename = "withdrawn.v1")]
    Withdrawn { amount: i64 },
}

pub enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl Aggregate for Account {
    const KIND: &'static str = "bank.account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = Refusal;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            AccountCommand::Open if self.open => Ok(vec![]),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => Err(Refusal::NotOpen),
            AccountCommand::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw(amount) if *amount > self.balance => {
                Err(Refusal::InsufficientFunds {
                    balance: self.balance,
                    asked: *amount,
                })
            }
            AccountCommand::Withdraw(amount) => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
        }
    }
}
