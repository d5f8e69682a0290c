//! Per-node log files for in-process nodes.
//!
//! Tests run in parallel threads of one process, and each node's tasks run
//! on whichever runtime thread is free, so logs cannot be split by thread
//! or by "current test". They are split by span instead: every task of a
//! node runs inside a span named `node` whose `data` field is the node's
//! data directory, and this layer appends each event to `<data>/node.log`
//! of the nearest such span. Events outside any node span go to one shared
//! file, [`outside_log`].
//!
//! libp2p runs each connection in a task whose span has no parent but
//! *follows from* the span that opened it; such spans are enabled here and
//! inherit the node's file, so a connection's events land in its node's log.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// What gets logged, for in-process nodes and for the binaries the harness
/// starts (as `RUST_LOG`): the crate's own debug lines, everyone else's info.
pub const FILTER: &str = "info,peermirror=debug";

/// The file a node's log goes to, inside its directory.
pub const LOG_FILE: &str = "node.log";

/// The spans libp2p opens for dials and connections, at debug level, each
/// `follows_from` the span that was current when it was opened.
const LINK_SPANS: [&str; 4] = [
    "Transport::dial",
    "new_outgoing_connection",
    "new_incoming_connection",
    "new_established_connection",
];

/// Installs the routing subscriber once for this test process.
pub fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let outside = outside_log();
        let _ = std::fs::create_dir_all(outside.parent().unwrap());
        let sink = Sink::new(outside.clone());
        // Start empty: the file is about this run only.
        *sink.file.lock().unwrap() = File::create(&outside).ok();
        let layer = NodeLogs {
            outside: Arc::new(sink),
        };
        let filter = LinkSpans(EnvFilter::new(FILTER));
        // Fails only if something else installed a global subscriber first;
        // the logs then go wherever that one sends them.
        let _ = tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init();
    });
}

/// Where events outside any node's span go (shared by every test of the
/// run; emptied when the run starts logging).
pub fn outside_log() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("integration-outside-nodes.log")
}

/// An append-only log file, opened on first use so that a node whose data
/// directory does not exist yet can already be given one.
struct Sink {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Sink {
    fn new(path: PathBuf) -> Sink {
        Sink {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends one whole line with a single write, so lines from several
    /// handles on the same file never interleave.
    fn write(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            let open = || {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            };
            *file = open()
                .or_else(|_| {
                    std::fs::create_dir_all(self.path.parent().unwrap())?;
                    open()
                })
                .ok();
        }
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// A span's fields, formatted once when it is created.
struct SpanFields(String);

/// The layer: formats each event as one line and appends it to the log of
/// the node it belongs to.
struct NodeLogs {
    outside: Arc<Sink>,
}

/// The log of the nearest span in `scope` that has one.
fn sink_of<'a, S>(
    scope: impl Iterator<Item = tracing_subscriber::registry::SpanRef<'a, S>>,
) -> Option<Arc<Sink>>
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    for span in scope {
        if let Some(s) = span.extensions().get::<Arc<Sink>>() {
            return Some(s.clone());
        }
    }
    None
}

impl<S> Layer<S> for NodeLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let is_node = attrs.metadata().name() == "node";
        let mut fields = Fields {
            is_node,
            ..Fields::default()
        };
        attrs.record(&mut fields);
        let mut ext = span.extensions_mut();
        if is_node {
            if let Some(data) = fields.data.take() {
                ext.replace(Arc::new(Sink::new(PathBuf::from(data).join(LOG_FILE))));
            }
        }
        ext.replace(SpanFields(fields.text));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut ext = span.extensions_mut();
        if let Some(f) = ext.get_mut::<SpanFields>() {
            f.0.push_str(&fields.text);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let (Some(span), Some(cause)) = (ctx.span(id), ctx.span(follows)) else {
            return;
        };
        if sink_of(span.scope()).is_some() {
            return;
        }
        if let Some(sink) = sink_of(cause.scope()) {
            span.extensions_mut().replace(sink);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut sink = None;
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                let ext = span.extensions();
                if sink.is_none() {
                    sink = ext.get::<Arc<Sink>>().cloned();
                }
                // The node span is implied by the file the line is in.
                if span.name() != "node" {
                    let fields = ext.get::<SpanFields>().map_or("", |f| f.0.trim_start());
                    spans.push(if fields.is_empty() {
                        span.name().to_string()
                    } else {
                        format!("{}{{{fields}}}", span.name())
                    });
                }
            }
        }
        let meta = event.metadata();
        let mut line = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        let _ = write!(line, " {:>5} ", meta.level());
        for s in spans.iter().rev() {
            let _ = write!(line, "{s}:");
        }
        if !spans.is_empty() {
            line.push(' ');
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let _ = write!(line, "{}:", meta.target());
        if !fields.message.is_empty() {
            line.push(' ');
            line.push_str(&fields.message);
        }
        line.push_str(&fields.text);
        line.push('\n');
        sink.as_ref().unwrap_or(&self.outside).write(&line);
    }
}

/// Collects an event's or span's fields as text (`message` apart, and a
/// node span's `data` apart too).
#[derive(Default)]
struct Fields {
    is_node: bool,
    message: String,
    data: Option<String>,
    text: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "data" if self.is_node => self.data = Some(value.to_string()),
            name => {
                let _ = write!(self.text, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            // `data = %path.display()` arrives here, as Display through Debug.
            "data" if self.is_node => self.data = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.text, " {name}={value:?}");
            }
        }
    }
}

/// [`FILTER`], plus libp2p's connection spans whatever their level: they
/// carry a node's log file over to its connection tasks (see the module docs).
struct LinkSpans(EnvFilter);

fn is_link_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("libp2p_swarm") && LINK_SPANS.contains(&meta.name())
}

impl<S> Filter<S> for LinkSpans
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        is_link_span(meta) || Filter::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if is_link_span(meta) {
            tracing::subscriber::Interest::always()
        } else {
            Filter::<S>::callsite_enabled(&self.0, meta)
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0).map(|l| l.max(LevelFilter::DEBUG))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        Filter::on_new_span(&self.0, attrs, id, ctx)
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        Filter::on_record(&self.0, id, values, ctx)
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        Filter::on_enter(&self.0, id, ctx)
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        Filter::on_exit(&self.0, id, ctx)
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        Filter::on_close(&self.0, id, ctx)
    }
}
