//! A batch id cannot forge a line of a text log: it enters the log (the
//! batch's span) only once it would pass the header check. Its own test
//! binary, like `tests/logs.rs`, so that no other test's gateway registers the
//! log call sites first or writes into the captured log.

mod common;

use common::*;
use tonic::Code;

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_id_cannot_forge_a_text_log_line() {
    // Text logs, as `schakel serve` writes them without --log-json. The
    // subscriber is this thread's, and the test runtime runs the gateway on it.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("schakel=debug")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    for (batch_id, code) in [
        (
            "run-1\nFORGED batch received supplier=supplier-b accepted=9999".to_owned(),
            "INVALID_CHARACTERS",
        ),
        ("\u{1b}[2J".to_owned(), "INVALID_CHARACTERS"),
        (format!("{}FORGED", "x".repeat(200)), "TOO_LONG"),
    ] {
        let status = intake
            .submit_batch(batch(&batch_id, vec![record("forge-1")]))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(code_of(&status), code);
    }
    let text = String::from_utf8_lossy(
        &captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(
        !text.contains("FORGED"),
        "a batch id reached the log:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("batch=<invalid>")),
        "the refusals are logged in the batch's span, with a placeholder:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "a control character reached the log"
    );
}
