//! Logging for people and for collectors: the subscriber every command
//! logs through (stderr), set up once from the `[log]` settings, the
//! command's default level, `-v`/`-q`, and `RUST_LOG`.
//!
//! * Level: `RUST_LOG` if set (it wins outright); otherwise `log.level`
//!   with every level in it moved up a step per `-v` and down a step per
//!   `-q`. `run` defaults to [`RUN_LOG_LEVEL`] (its own events at info);
//!   other commands to warnings, since they print their own results.
//! * Format: `text` is one line per event, `2026-11-24 10:15:03Z  INFO
//!   message key=value`, coloured only when stderr is a terminal (and
//!   `NO_COLOR` is unset), without the time when stderr goes to the journal
//!   (it stamps lines itself), with the module only at debug and trace;
//!   `json` is one object a line with the event's fields at the top level.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use peermirror::config::{LogFormat, LogSettings};
use peermirror::human;

pub use peermirror::config::RUN_LOG_LEVEL;

/// Levels from quietest to loudest, as filters spell them.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Moves every level in a filter (`warn,peermirror=info`) `by` steps
/// louder (negative: quieter), within off..trace. Directives without a
/// level name (a bare target, which enables everything) are kept as they are.
pub fn shift_filter(filter: &str, by: i32) -> String {
    if by == 0 {
        return filter.to_string();
    }
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let (target, level) = match d.rsplit_once('=') {
                Some((t, l)) => (Some(t), l),
                None => (None, d),
            };
            let Some(i) = LEVELS.iter().position(|l| l.eq_ignore_ascii_case(level)) else {
                return d.to_string();
            };
            let moved = LEVELS[(i as i32 + by).clamp(0, LEVELS.len() as i32 - 1) as usize];
            match target {
                Some(t) => format!("{t}={moved}"),
                None => moved.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the process's subscriber. `verbosity` is the count of `-v`
/// minus the count of `-q`.
pub fn init(settings: &LogSettings, verbosity: i32) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let wanted = shift_filter(&settings.level, verbosity);
        EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
            eprintln!("warning: log.level {wanted:?} is not a filter ({e}); logging warnings");
            EnvFilter::new("warn")
        })
    });
    let subscriber: Box<dyn Subscriber + Send + Sync> = match settings.format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .finish(),
        ),
        LogFormat::Text => {
            let stderr = std::io::stderr();
            let ansi = stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none();
            Box::new(
                tracing_subscriber::fmt()
                    .with_ansi(ansi)
                    .event_format(ForPeople {
                        time: std::env::var_os("JOURNAL_STREAM").is_none(),
                        ansi,
                    })
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr)
                    .finish(),
            )
        }
    };
    subscriber.init();
}

/// The `text` format: time, level, message and fields; the module at
/// debug and trace only; no span context (one node per process).
struct ForPeople {
    time: bool,
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for ForPeople
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if self.time {
            write!(w, "{} ", human::date(peermirror::announce::now()))?;
        }
        let level = *meta.level();
        let (colour, name) = match level {
            Level::ERROR => ("31", "ERROR"),
            Level::WARN => ("33", " WARN"),
            Level::INFO => ("32", " INFO"),
            Level::DEBUG => ("34", "DEBUG"),
            Level::TRACE => ("35", "TRACE"),
        };
        if self.ansi {
            write!(w, "\x1b[{colour}m{name}\x1b[0m ")?;
        } else {
            write!(w, "{name} ")?;
        }
        if level >= Level::DEBUG {
            write!(w, "{}: ", meta.target())?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_moves_every_level() {
        let run = RUN_LOG_LEVEL;
        assert_eq!(shift_filter(run, 0), run);
        assert_eq!(
            shift_filter(run, 1),
            "info,peermirror=debug,libp2p_kad=warn"
        );
        assert_eq!(
            shift_filter(run, -1),
            "error,peermirror=warn,libp2p_kad=off"
        );
        assert_eq!(shift_filter("info", 5), "trace");
        assert_eq!(shift_filter("info", -9), "off");
        // A bare target enables everything: nothing to move.
        assert_eq!(shift_filter("peermirror,warn", 1), "peermirror,info");
    }
}
