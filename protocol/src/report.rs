//! An error and its causes as one line for a user: the message a failed
//! command sends to the client, an error of `terminalwire`'s own commands.

use std::error::Error;

/// `error` and its causes joined by `": "`, each shown once.
///
/// Many error types print their cause in their own message and also return
/// it from [`Error::source`] (thiserror's `{source}` field does both), so
/// walking the chain would show it twice: a cause whose text the line
/// already ends with is left out.
pub fn chain_text(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let shown = current.to_string();
        if !shown.is_empty() && !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadFailed {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the policy")]
    struct Loading(#[source] ReadFailed);

    #[test]
    fn a_cause_already_in_the_message_is_shown_once() {
        let read = ReadFailed {
            path: "policy.toml".into(),
            source: std::io::Error::other("not UTF-8"),
        };
        assert_eq!(chain_text(&read), "cannot read policy.toml: not UTF-8");
        // A context that does not quote its cause gets it appended, and the
        // cause's own cause is not repeated.
        assert_eq!(
            chain_text(&Loading(read)),
            "loading the policy: cannot read policy.toml: not UTF-8"
        );
    }
}
