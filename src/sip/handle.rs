//! [`SipHandle`]: how other tasks (the HTTP API, the call engine) talk to
//! the SIP task that owns the [`crate::sip::endpoint::Endpoint`]. The
//! endpoint is sans-IO and single-owner (DESIGN.md "The core API shape"),
//! so every question is a [`SipCommand`] on a channel, answered in turn
//! with the SIP traffic.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::sip::digest::StoredHa1;
use crate::sip::endpoint::Endpoint;
use crate::sip::flood::BanInfo;
use crate::sip::registrar::Binding;

/// A username refused from one address after failed digest responses
/// (`sip::auth_limit`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountLockout {
    /// The username the guesses named (known or not: the answer was the
    /// same).
    pub username: String,
    /// The address they came from.
    pub address: IpAddr,
    /// When the lockout ends (wall clock).
    pub until: SystemTime,
}

/// Bans in force at the SIP front door.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bans {
    /// Source addresses whose messages are dropped (`sip::flood`).
    pub sources: Vec<BanInfo>,
    /// Usernames refused from an address (`sip::auth_limit`).
    pub accounts: Vec<AccountLockout>,
}

/// Requests other tasks make of the SIP task.
pub enum SipCommand {
    /// The live bindings of an agent.
    Bindings {
        /// The agent.
        aor: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<Binding>>,
    },
    /// An agent created or changed through the API.
    SetAgent {
        /// The agent.
        username: String,
        /// Its HA1 values for this realm.
        ha1: StoredHa1,
    },
    /// An agent deleted through the API.
    RemoveAgent {
        /// The agent.
        username: String,
    },
    /// How many registrar bindings are live.
    BindingCount {
        /// Where the answer goes.
        reply: oneshot::Sender<usize>,
    },
    /// The bans in force.
    Bans {
        /// Where the answer goes.
        reply: oneshot::Sender<Bans>,
    },
    /// The dialer sessions' own caller IDs changed: calls from a trunk to
    /// them are callbacks too (SPEC §1 "Leads calling back").
    SessionCallerIds {
        /// Every session's caller ID.
        numbers: Vec<String>,
    },
    /// Lifts every ban on an address.
    Unban {
        /// The address.
        address: IpAddr,
        /// Whether there was a ban.
        reply: oneshot::Sender<bool>,
    },
}

impl SipCommand {
    /// Runs the command on the endpoint at `now`.
    pub fn apply(self, endpoint: &mut Endpoint, now: std::time::Instant, wall: SystemTime) {
        match self {
            SipCommand::Bindings { aor, reply } => {
                let _ = reply.send(endpoint.bindings(&aor, wall));
            }
            SipCommand::SetAgent { username, ha1 } => endpoint.set_agent(&username, ha1),
            SipCommand::RemoveAgent { username } => endpoint.remove_agent(&username),
            SipCommand::BindingCount { reply } => {
                let _ = reply.send(endpoint.binding_count(wall));
            }
            SipCommand::Bans { reply } => {
                let accounts = endpoint
                    .account_lockouts(now)
                    .into_iter()
                    .map(|(username, address, left)| AccountLockout {
                        username,
                        address,
                        until: wall + left,
                    })
                    .collect();
                let _ = reply.send(Bans {
                    sources: endpoint.bans(now),
                    accounts,
                });
            }
            SipCommand::SessionCallerIds { numbers } => endpoint.set_session_caller_ids(numbers),
            SipCommand::Unban { address, reply } => {
                let lifted = endpoint.unban(address, now);
                if lifted {
                    tracing::info!(%address, "SIP ban lifted");
                }
                let _ = reply.send(lifted);
            }
        }
    }
}

/// A clonable handle to the SIP task.
#[derive(Clone)]
pub struct SipHandle {
    commands: mpsc::Sender<SipCommand>,
}

/// How long an API call waits for the SIP task before giving up (it
/// answers between two batches of messages; this is only hit when it is
/// gone).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl SipHandle {
    /// A handle sending to the SIP task's command channel.
    pub fn new(commands: mpsc::Sender<SipCommand>) -> Self {
        SipHandle { commands }
    }

    async fn ask<T: Default>(&self, make: impl FnOnce(oneshot::Sender<T>) -> SipCommand) -> T {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(make(reply)).await.is_err() {
            return T::default();
        }
        tokio::time::timeout(ASK_TIMEOUT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// The live registrar bindings of an agent (empty when the SIP task is gone).
    pub async fn bindings(&self, aor: &str) -> Vec<Binding> {
        let aor = aor.to_string();
        self.ask(|reply| SipCommand::Bindings { aor, reply }).await
    }

    /// Lets an agent created through the API authenticate (its HA1 values
    /// for this realm).
    pub async fn set_agent(&self, username: &str, ha1: StoredHa1) {
        let _ = self
            .commands
            .send(SipCommand::SetAgent {
                username: username.to_string(),
                ha1,
            })
            .await;
    }

    /// Stops an agent deleted through the API from authenticating.
    pub async fn remove_agent(&self, username: &str) {
        let _ = self
            .commands
            .send(SipCommand::RemoveAgent {
                username: username.to_string(),
            })
            .await;
    }

    /// How many registrar bindings are live (0 when the SIP task is gone).
    pub async fn binding_count(&self) -> usize {
        self.ask(|reply| SipCommand::BindingCount { reply }).await
    }

    /// The bans in force (empty when the SIP task is gone).
    pub async fn bans(&self) -> Bans {
        self.ask(|reply| SipCommand::Bans { reply }).await
    }

    /// Tells the endpoint the sessions' caller IDs (callback numbers).
    pub async fn set_session_caller_ids(&self, numbers: Vec<String>) {
        let _ = self
            .commands
            .send(SipCommand::SessionCallerIds { numbers })
            .await;
    }

    /// Lifts every ban on `address`; whether there was one.
    pub async fn unban(&self, address: IpAddr) -> bool {
        self.ask(|reply| SipCommand::Unban { address, reply }).await
    }
}
