//! How a command's return value becomes the client's exit status.

use std::future::Future;
use std::pin::Pin;

use terminalwire_protocol::report::chain_text;

use crate::Context;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The command chose this exit status.
    Exit(u8),
    /// The command failed: the message is shown on the client's stderr
    /// (`error: ...`) and the client exits with status 1.
    Failed(String),
    /// The command failed with an exit status of its own
    /// ([`Exit::with_message`]): the message is shown as for
    /// [`Failed`](Outcome::Failed) and the client exits with this status,
    /// or with 1 when it is 0 (a failure never reports success).
    FailedWith(u8, String),
}

/// Ends the command at once with a status, after everything it printed is delivered.
///
/// Return it as an error (`return Err(Exit(3).into())`, or `?` on a function
/// returning it) to stop from deep inside a command; no message is printed.
/// To say why as well, return [`Exit::with_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exit with status {0}")]
pub struct Exit(pub u8);

impl Exit {
    /// An error that ends the command with this status after showing
    /// `message` on the client's stderr as any other error is shown
    /// (`error: ...`, with the context an `anyhow` chain adds around it).
    ///
    /// A failure never exits with 0: `Exit(0).with_message(..)` exits with
    /// 1, as any other error does, rather than tell a script that a command
    /// which printed `error: ...` succeeded. To end successfully with a
    /// note, print it (`ctx.stderr().println(..)`) and return `Exit(0)`.
    ///
    /// ```
    /// use terminalwire_server::Exit;
    ///
    /// const NOT_FOUND: Exit = Exit(3);
    ///
    /// fn task(id: u64) -> anyhow::Result<String> {
    ///     Err(NOT_FOUND.with_message(format!("you have no task {id}")).into())
    /// }
    /// # assert!(task(7).is_err());
    /// ```
    pub fn with_message(self, message: impl Into<String>) -> Failure {
        Failure {
            status: Exit(failure_status(self.0)),
            message: message.into(),
        }
    }
}

/// The status a failure chose, except 0: a failure does not succeed.
pub(crate) fn failure_status(status: u8) -> u8 {
    if status == 0 { 1 } else { status }
}

/// An error that ends the command with an exit status of its own and a
/// message ([`Exit::with_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    status: Exit,
    message: String,
}

impl Failure {
    /// The status the client exits with (never 0: see [`Exit::with_message`]).
    pub fn status(&self) -> Exit {
        self.status
    }

    /// What the client is told.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Values a command may return.
pub trait IntoOutcome {
    /// Converts into an [`Outcome`].
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Exit(0)
    }
}

impl IntoOutcome for u8 {
    fn into_outcome(self) -> Outcome {
        Outcome::Exit(self)
    }
}

impl IntoOutcome for Exit {
    fn into_outcome(self) -> Outcome {
        Outcome::Exit(self.0)
    }
}

impl IntoOutcome for i32 {
    /// Statuses outside 0..=255 become 1, as a shell would never see them.
    fn into_outcome(self) -> Outcome {
        Outcome::Exit(u8::try_from(self).unwrap_or(1))
    }
}

/// Any error an app's command may fail with: `anyhow::Error`, `io::Error`,
/// the SDK's own (`ResourceError`, ...), or the app's error types. An
/// [`Exit`] among them, however wrapped, ends with its status and no
/// message; a [`Failure`] with its status and the message of the whole
/// chain; any other is shown with its causes, and status 1. (A
/// `Box<dyn Error + Send + Sync>` goes through `anyhow::Error::from_boxed`.)
impl<T: IntoOutcome, E: Into<anyhow::Error>> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(value) => value.into_outcome(),
            Err(error) => {
                let error: anyhow::Error = error.into();
                match exit_in(error.as_ref()) {
                    Some(Ending::Exit(exit)) => Outcome::Exit(exit.0),
                    Some(Ending::Failure(failure)) => {
                        Outcome::FailedWith(failure.status.0, chain_text(error.as_ref()))
                    }
                    None => Outcome::Failed(chain_text(error.as_ref())),
                }
            }
        }
    }
}

/// An error that chooses the exit status.
enum Ending<'a> {
    Exit(&'a Exit),
    Failure(&'a Failure),
}

/// The first [`Exit`] or [`Failure`] in `error`'s chain of causes, also
/// inside an `io::Error` (whose `source` skips the error it wraps:
/// `io::Error::other(Exit(3))`, what an app's own `AsyncRead` in
/// `tokio::io::copy` would give).
fn exit_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<Ending<'a>> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(exit) = current.downcast_ref::<Exit>() {
            return Some(Ending::Exit(exit));
        }
        if let Some(failure) = current.downcast_ref::<Failure>() {
            return Some(Ending::Failure(failure));
        }
        if let Some(wrapped) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(exit) = exit_in(wrapped)
        {
            return Some(exit);
        }
        cause = current.source();
    }
    None
}

/// A boxed command future.
pub type CommandFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// A remote command: what runs on the server for each client session.
///
/// Implemented for every `Fn(Context) -> impl Future<Output = impl IntoOutcome>`.
pub trait Command: Send + Sync + 'static {
    /// Runs the command for one session.
    fn run(&self, ctx: Context) -> CommandFuture;
}

impl<F, Fut, R> Command for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcome,
{
    fn run(&self, ctx: Context) -> CommandFuture {
        let fut = self(ctx);
        Box::pin(async move { fut.await.into_outcome() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_map_to_outcomes() {
        assert_eq!(().into_outcome(), Outcome::Exit(0));
        assert_eq!(7u8.into_outcome(), Outcome::Exit(7));
        assert_eq!(300i32.into_outcome(), Outcome::Exit(1));
        assert_eq!(Err::<(), Exit>(Exit(4)).into_outcome(), Outcome::Exit(4));
        let failed: anyhow::Result<()> = Err(anyhow::anyhow!("disk full").context("saving"));
        assert_eq!(
            failed.into_outcome(),
            Outcome::Failed("saving: disk full".into())
        );
        // A cause the message already quotes is not repeated (an error
        // type with a `{source}` field); one it does not quote is appended.
        let read = std::io::Error::other("not UTF-8");
        let quoted: anyhow::Result<()> =
            Err(anyhow::Error::new(read).context("cannot read notes.db: not UTF-8"));
        assert_eq!(
            quoted.into_outcome(),
            Outcome::Failed("cannot read notes.db: not UTF-8".into())
        );
        #[derive(Debug, thiserror::Error)]
        #[error("cannot save the note")]
        struct SaveFailed(#[source] std::io::Error);
        let own: Result<(), SaveFailed> = Err(SaveFailed(std::io::Error::other("disk full")));
        assert_eq!(
            own.into_outcome(),
            Outcome::Failed("cannot save the note: disk full".into())
        );
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(SaveFailed(std::io::Error::other("disk full")));
        assert_eq!(
            Err::<(), _>(anyhow::Error::from_boxed(boxed)).into_outcome(),
            Outcome::Failed("cannot save the note: disk full".into())
        );
        // The SDK's own errors, and an io::Error with its causes.
        let resource: Result<(), crate::context::ResourceError> =
            Err(crate::context::ResourceError::Disconnected);
        assert!(
            matches!(resource.into_outcome(), Outcome::Failed(message) if message.contains("disconnected"))
        );
        let io: Result<(), std::io::Error> = Err(std::io::Error::other(SaveFailed(
            std::io::Error::other("disk full"),
        )));
        assert_eq!(
            io.into_outcome(),
            Outcome::Failed("cannot save the note: disk full".into())
        );
        // A status of its own with a message, and the context around it.
        let failed: anyhow::Result<()> = Err(Exit(3).with_message("no task 7").into());
        assert_eq!(
            failed.into_outcome(),
            Outcome::FailedWith(3, "no task 7".into())
        );
        let failed: anyhow::Result<()> =
            Err(anyhow::Error::new(Exit(3).with_message("no task 7")).context("done"));
        assert_eq!(
            failed.into_outcome(),
            Outcome::FailedWith(3, "done: no task 7".into())
        );
        let io: Result<(), std::io::Error> =
            Err(std::io::Error::other(Exit(4).with_message("log in first")));
        assert_eq!(
            io.into_outcome(),
            Outcome::FailedWith(4, "log in first".into())
        );
        // A failure never exits with 0.
        let zero = Exit(0).with_message("nothing to do");
        assert_eq!(zero.status(), Exit(1));
        let failed: anyhow::Result<()> = Err(zero.into());
        assert_eq!(
            failed.into_outcome(),
            Outcome::FailedWith(1, "nothing to do".into())
        );
        let exit: anyhow::Result<()> = Err(Exit(9).into());
        assert_eq!(exit.into_outcome(), Outcome::Exit(9));
        // Wrapped in context, or as the source of the app's own error.
        let wrapped: anyhow::Result<()> = Err(anyhow::Error::new(Exit(4)).context("stopping"));
        assert_eq!(wrapped.into_outcome(), Outcome::Exit(4));
        #[derive(Debug, thiserror::Error)]
        #[error("the app stops")]
        struct Stops(#[source] Exit);
        assert_eq!(
            Err::<(), _>(Stops(Exit(5))).into_outcome(),
            Outcome::Exit(5)
        );
    }
}
