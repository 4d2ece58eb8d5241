//! Log output: `tracing` to stderr. Under systemd, whose journal already stamps every line
//! with time, unit and pid, each line starts with the syslog priority as `<N>` instead of a
//! timestamp, so `journalctl -p warning` filters exitd's warnings and errors.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the global subscriber; `default_filter` applies unless RUST_LOG is set.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journal {
        builder.event_format(Journald).init();
    } else {
        builder.init();
    }
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=dev:inode`, see
/// systemd.exec(5)); a redirected stderr keeps the ordinary format.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on fd 2 into a buffer of the right type.
    if unsafe { libc::fstat(2, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded and filled it.
    let stat = unsafe { stat.assume_init() };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<priority>target: message key=value …`, one line per event.
pub struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>{}: ", priority(meta.level()), meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_timestamp() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .event_format(Journald)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "exitd::x", code = 7, "broke");
            tracing::warn!(target: "exitd::x", "odd");
            tracing::info!(target: "exitd::x", addr = "127.0.0.1:1", "listening");
            tracing::debug!(target: "exitd::x", "detail");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<3>exitd::x: broke code=7\n<4>exitd::x: odd\n\
             <6>exitd::x: listening addr=\"127.0.0.1:1\"\n<7>exitd::x: detail\n"
        );
    }

    #[test]
    fn a_terminal_or_file_is_not_the_journal() {
        // SAFETY: the test process's environment; no other test reads JOURNAL_STREAM.
        unsafe { std::env::set_var("JOURNAL_STREAM", "0:0") };
        assert!(!stderr_is_journal(), "another stream than stderr's");
        unsafe { std::env::remove_var("JOURNAL_STREAM") };
        assert!(!stderr_is_journal());
    }
}
