//! One event as Patroni's logging prints it: a line from a Python `%`-format
//! (`logging.Formatter`), or a JSON object with python-json-logger's keys, order and spacing
//! (`{"asctime": "...", "levelname": "INFO", "message": "..."}`, non-ASCII escaped).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use chrono::{DateTime, Local};
use patrol_config::log::{
    AttrKind, ConvKind, Conversion, FormatPiece, JsonField, Log, LogAttr, LogFormat, LogLevel,
};
use patrol_config::pyfmt::{float_repr, json_dumps, str_repr};
use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::ErrorCounter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::CRITICAL;

/// The event formatter of the agent's subscriber, built from the `log` section.
pub(crate) struct PatroniFormat {
    layout: Layout,
    dateformat: Option<String>,
    /// When the agent started (`relativeCreated`).
    started: SystemTime,
    /// Lines the file writer dropped, to say so in the log.
    dropped: Option<Dropped>,
}

enum Layout {
    Plain(Vec<FormatPiece>),
    Json {
        fields: Vec<JsonField>,
        static_fields: Map<String, Value>,
    },
}

struct Dropped {
    counter: ErrorCounter,
    reported: AtomicUsize,
}

impl PatroniFormat {
    /// `dropped`: the counter of the queue in front of the log file, if there is one.
    pub(crate) fn new(log: &Log, started: SystemTime, dropped: Option<ErrorCounter>) -> Self {
        let layout = match &log.format {
            LogFormat::Plain(pieces) => Layout::Plain(pieces.clone()),
            LogFormat::Json(fields) => Layout::Json {
                fields: fields.clone(),
                static_fields: log.static_fields.clone(),
            },
        };
        PatroniFormat {
            layout,
            dateformat: log.dateformat.clone(),
            started,
            dropped: dropped.map(|counter| Dropped {
                reported: AtomicUsize::new(counter.dropped_lines()),
                counter,
            }),
        }
    }

    /// Appends the record as one line (with its `\n`).
    fn render(&self, r: &Record<'_>, out: &mut String) {
        match &self.layout {
            Layout::Plain(pieces) => {
                for piece in pieces {
                    match piece {
                        FormatPiece::Text(t) => out.push_str(t),
                        FormatPiece::Field(attr, conv) => {
                            convert(&r.value(*attr, self), conv, out);
                        }
                    }
                }
            }
            Layout::Json {
                fields,
                static_fields,
            } => {
                let mut object = Map::new();
                for f in fields {
                    let v = f.attr.map(|a| r.value(a, self)).unwrap_or(AttrValue::Null);
                    object.insert(f.key.clone(), v.into_json());
                }
                for (k, v) in static_fields {
                    object.insert(k.clone(), v.clone());
                }
                out.push_str(&json_dumps(&Value::Object(object)));
            }
        }
        out.push('\n');
    }

    fn asctime(&self, now: &DateTime<Local>) -> String {
        let mut s = String::new();
        let written = match &self.dateformat {
            Some(f) => write!(s, "{}", now.format(f)),
            None => write!(s, "{}", now.format("%Y-%m-%d %H:%M:%S,%3f")),
        };
        if written.is_err() {
            // `log.dateformat` is checked at load; should chrono still fail, the default.
            s.clear();
            let _ = write!(s, "{}", now.format("%Y-%m-%d %H:%M:%S,%3f"));
        }
        s
    }
}

impl<S, N> FormatEvent<S, N> for PatroniFormat
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
        let now = Local::now();
        let mut out = String::new();
        if let Some(d) = &self.dropped {
            let total = d.counter.dropped_lines();
            let before = d.reported.swap(total, Ordering::Relaxed);
            if total > before {
                let message = format!(
                    "{} log lines were lost: more than log.max_queue_size lines waited for the log file",
                    total - before
                );
                let lost = Record {
                    now,
                    level: LogLevel::Warning,
                    target: module_path!(),
                    file: Some(file!()),
                    line: Some(line!()),
                    module_path: Some(module_path!()),
                    message: &message,
                };
                self.render(&lost, &mut out);
            }
        }
        let mut message = String::new();
        ctx.format_fields(Writer::new(&mut message), event)?;
        let meta = event.metadata();
        let record = Record {
            now,
            level: level_of(meta.level(), meta.target()),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            module_path: meta.module_path(),
            message: &message,
        };
        self.render(&record, &mut out);
        writer.write_str(&out)
    }
}

/// Python's level of a tracing event: `TRACE` prints as `DEBUG`; errors with the
/// [`CRITICAL`] target are `CRITICAL`.
pub(crate) fn level_of(level: &Level, target: &str) -> LogLevel {
    match *level {
        Level::ERROR if target == CRITICAL => LogLevel::Critical,
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warning,
        Level::INFO => LogLevel::Info,
        Level::DEBUG | Level::TRACE => LogLevel::Debug,
    }
}

/// What a Python `LogRecord` would hold, from a tracing event.
struct Record<'a> {
    now: DateTime<Local>,
    level: LogLevel,
    target: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    module_path: Option<&'a str>,
    message: &'a str,
}

/// An attribute's value, typed as in Python.
#[derive(Debug, PartialEq)]
enum AttrValue<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Null,
}

impl AttrValue<'_> {
    fn into_json(self) -> Value {
        match self {
            AttrValue::Text(t) => Value::String(t.into_owned()),
            AttrValue::Int(i) => Value::from(i),
            AttrValue::Float(f) => Value::from(f),
            AttrValue::Null => Value::Null,
        }
    }
}

impl<'a> Record<'a> {
    fn value(&self, attr: LogAttr, format: &PatroniFormat) -> AttrValue<'a> {
        use AttrValue::{Float, Int, Null, Text};
        let created = self
            .now
            .timestamp_nanos_opt()
            .map(|n| n as f64 / 1e9)
            .unwrap_or_else(|| self.now.timestamp() as f64);
        let value = match attr {
            LogAttr::Asctime => Text(format.asctime(&self.now).into()),
            LogAttr::Created => Float(created),
            LogAttr::Msecs => Float(f64::from(self.now.timestamp_subsec_millis())),
            LogAttr::RelativeCreated => {
                let since = SystemTime::from(self.now)
                    .duration_since(format.started)
                    .unwrap_or_default();
                Float(since.as_secs_f64() * 1000.0)
            }
            LogAttr::Levelname => Text(self.level.name().into()),
            LogAttr::Levelno => Int(i64::from(self.level.number())),
            LogAttr::Name => Text(self.target.replace("::", ".").into()),
            LogAttr::Message | LogAttr::Msg => Text(self.message.into()),
            LogAttr::Pathname => Text(self.file.unwrap_or("").into()),
            LogAttr::Filename => {
                let file = self.file.unwrap_or("");
                Text(file.rsplit('/').next().unwrap_or(file).into())
            }
            LogAttr::Module => {
                let path = self.module_path.unwrap_or(self.target);
                Text(path.rsplit("::").next().unwrap_or(path).into())
            }
            LogAttr::FuncName => Text(self.module_path.unwrap_or(self.target).into()),
            LogAttr::Lineno => Int(i64::from(self.line.unwrap_or(0))),
            LogAttr::Process => Int(i64::from(std::process::id())),
            LogAttr::ProcessName => Text("MainProcess".into()),
            LogAttr::Thread => Int(i64::from(nix::unistd::gettid().as_raw())),
            LogAttr::ThreadName => {
                let name = match std::thread::current().name() {
                    Some("main") => "MainThread".to_string(),
                    Some(n) => n.to_string(),
                    None => "unnamed".to_string(),
                };
                Text(name.into())
            }
            LogAttr::TaskName
            | LogAttr::ExcInfo
            | LogAttr::ExcText
            | LogAttr::StackInfo
            | LogAttr::Args => Null,
        };
        debug_assert!(matches!(
            (&value, attr.kind()),
            (Text(_), AttrKind::Text)
                | (Int(_), AttrKind::Int)
                | (Float(_), AttrKind::Float)
                | (Null, AttrKind::Null)
        ));
        value
    }
}

/// Applies a `%`-conversion as Python's `%` operator does. The parser only lets through
/// conversions that apply to the attribute's kind.
fn convert(value: &AttrValue<'_>, c: &Conversion, out: &mut String) {
    let text: String = match (c.kind, value) {
        (ConvKind::Str, AttrValue::Text(t)) => t.to_string(),
        (ConvKind::Repr, AttrValue::Text(t)) => str_repr(t),
        (ConvKind::Str | ConvKind::Repr, AttrValue::Int(i)) => i.to_string(),
        (ConvKind::Str | ConvKind::Repr, AttrValue::Float(f)) => float_repr(*f),
        (ConvKind::Str | ConvKind::Repr, AttrValue::Null) => "None".to_string(),
        (ConvKind::Int, AttrValue::Int(i)) => {
            return number(*i < 0, i.unsigned_abs().to_string(), "", c, out)
        }
        (ConvKind::Int, AttrValue::Float(f)) => {
            return number(*f < 0.0, format!("{}", f.abs().trunc()), "", c, out)
        }
        (ConvKind::Float, AttrValue::Int(i)) => {
            let p = c.precision.unwrap_or(6);
            return number(
                *i < 0,
                format!("{:.p$}", i.unsigned_abs() as f64),
                "",
                c,
                out,
            );
        }
        (ConvKind::Float, AttrValue::Float(f)) => {
            let p = c.precision.unwrap_or(6);
            return number(f.is_sign_negative(), format!("{:.p$}", f.abs()), "", c, out);
        }
        (ConvKind::Hex, AttrValue::Int(i)) => {
            return number(*i < 0, format!("{:x}", i.unsigned_abs()), "0x", c, out)
        }
        (ConvKind::HexUpper, AttrValue::Int(i)) => {
            return number(*i < 0, format!("{:X}", i.unsigned_abs()), "0X", c, out)
        }
        (ConvKind::Octal, AttrValue::Int(i)) => {
            return number(*i < 0, format!("{:o}", i.unsigned_abs()), "0o", c, out)
        }
        // Refused when the format is read; written as `str()` should one slip through.
        (_, AttrValue::Text(t)) => t.to_string(),
        (_, AttrValue::Float(f)) => float_repr(*f),
        (_, AttrValue::Null) => "None".to_string(),
    };
    let text: Cow<'_, str> = match c.precision {
        Some(p) if text.chars().count() > p => text.chars().take(p).collect::<String>().into(),
        _ => text.into(),
    };
    pad(&text, c.width, c.left, out);
}

fn pad(text: &str, width: usize, left: bool, out: &mut String) {
    let fill = " ".repeat(width.saturating_sub(text.chars().count()));
    if !left {
        out.push_str(&fill);
    }
    out.push_str(text);
    if left {
        out.push_str(&fill);
    }
}

/// A number's sign, `#` prefix, zero padding and width.
fn number(negative: bool, digits: String, prefix: &str, c: &Conversion, out: &mut String) {
    let sign = if negative {
        "-"
    } else if c.plus {
        "+"
    } else if c.space {
        " "
    } else {
        ""
    };
    let prefix = if c.alternate { prefix } else { "" };
    let head = format!("{sign}{prefix}");
    if c.zero && !c.left {
        let zeros = c.width.saturating_sub(head.len() + digits.len());
        out.push_str(&head);
        out.push_str(&"0".repeat(zeros));
        out.push_str(&digits);
    } else {
        pad(&format!("{head}{digits}"), c.width, c.left, out);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use patrol_config::log::parse_plain;
    use serde_json::json;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("not poisoned").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    /// The lines `emit` logs under a subscriber formatting with `log`.
    fn lines(log: &Log, emit: impl FnOnce()) -> Vec<String> {
        let capture = Capture::default();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(PatroniFormat::new(log, SystemTime::now(), None))
            .with_writer(capture.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        capture.lines()
    }

    fn plain(format: &str) -> Log {
        Log {
            format: LogFormat::Plain(parse_plain(format).expect("valid format")),
            ..Log::default()
        }
    }

    fn json_log(fields: &[(&str, &str)], static_fields: Value) -> Log {
        Log {
            format: LogFormat::Json(
                fields
                    .iter()
                    .map(|(attr, key)| JsonField {
                        attr: LogAttr::from_name(attr),
                        key: key.to_string(),
                    })
                    .collect(),
            ),
            static_fields: match static_fields {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            ..Log::default()
        }
    }

    /// `YYYY-MM-DD HH:MM:SS,mmm` at the start of the line.
    fn starts_with_asctime(line: &str) -> bool {
        let b = line.as_bytes();
        b.len() >= 23
            && b[..23].iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                19 => *c == b',',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn the_default_layout_is_patronis() {
        let got = lines(&Log::default(), || {
            tracing::info!("no action. I am (pg0), the leader with the lock");
            tracing::warn!(member = "pg1", "lagging");
            tracing::trace!("fine detail");
            tracing::error!(target: CRITICAL, "Can't start");
        });
        assert_eq!(got.len(), 4, "{got:?}");
        for line in &got {
            assert!(starts_with_asctime(line), "{line}");
        }
        assert_eq!(
            &got[0][23..],
            " INFO: no action. I am (pg0), the leader with the lock"
        );
        assert_eq!(&got[1][23..], " WARNING: lagging member=\"pg1\"");
        assert_eq!(&got[2][23..], " DEBUG: fine detail");
        assert_eq!(&got[3][23..], " CRITICAL: Can't start");
    }

    /// Patroni's acceptance harness sets this format and reads the level at column 24.
    #[test]
    fn the_acceptance_harness_format_keeps_the_level_at_column_24() {
        let log = plain(
            "%(asctime)s %(levelname)s [%(pathname)s:%(lineno)d - %(funcName)s]: %(message)s",
        );
        let mut at = 0;
        let got = lines(&log, || {
            at = line!() + 1;
            tracing::warn!("No active replication connections");
            tracing::error!(target: CRITICAL, "Can't start; there is already a node named 'pg0' running");
        });
        assert!(starts_with_asctime(&got[0]), "{}", got[0]);
        assert_eq!(&got[0][24..24 + "WARNING".len()], "WARNING");
        assert!(
            got[0].contains(&format!(" [agent/src/logging/format.rs:{at} - ")),
            "{}",
            got[0]
        );
        assert!(
            got[0].ends_with(
                " - patrol_agent::logging::format::tests]: No active replication connections"
            ),
            "{}",
            got[0]
        );
        assert_eq!(&got[1][24..24 + "CRITICAL".len()], "CRITICAL");
    }

    #[test]
    fn conversions_pad_truncate_and_number_as_python() {
        let log = plain(
            "%(levelname)-8s|%(levelname)8s|%(levelno)03d|%(levelno)+d|%(levelno)x|%(levelno)#o|%(message).4s|%(message)r|%(taskName)s|%(msecs)03d|%(levelno).2f|%(processName)s|%(module)s|%(name)s|%(filename)s",
        );
        let got = lines(&log, || tracing::info!("it's \"quoted\""));
        let parts: Vec<&str> = got[0].split('|').collect();
        assert_eq!(parts[0], "INFO    ");
        assert_eq!(parts[1], "    INFO");
        assert_eq!(parts[2], "020");
        assert_eq!(parts[3], "+20");
        assert_eq!(parts[4], "14");
        assert_eq!(parts[5], "0o24");
        assert_eq!(parts[6], "it's");
        assert_eq!(parts[7], r#"'it\'s "quoted"'"#);
        assert_eq!(parts[8], "None");
        assert_eq!(parts[9].len(), 3);
        assert!(parts[9].bytes().all(|b| b.is_ascii_digit()), "{}", parts[9]);
        assert_eq!(parts[10], "20.00");
        assert_eq!(parts[11], "MainProcess");
        assert_eq!(parts[12], "tests");
        assert_eq!(parts[13], "patrol_agent.logging.format.tests");
        assert_eq!(parts[14], "format.rs");
    }

    #[test]
    fn dateformat_sets_asctime() {
        let log = Log {
            dateformat: Some("%d/%m/%Y".into()),
            ..plain("%(asctime)s %(message)s")
        };
        let before = Local::now().format("%d/%m/%Y x").to_string();
        let got = lines(&log, || tracing::info!("x"));
        let after = Local::now().format("%d/%m/%Y x").to_string();
        assert!(got[0] == before || got[0] == after, "{}", got[0]);
    }

    #[test]
    fn json_lines_parse_with_the_keys_of_the_format_then_the_static_fields() {
        let log = json_log(
            &[
                ("asctime", "asctime"),
                ("levelname", "level"),
                ("message", "message"),
                ("process", "process"),
                ("created", "created"),
                ("hostname", "hostname"),
            ],
            json!({"app": "patroni", "dc": 1}),
        );
        let got = lines(&log, || {
            tracing::info!("first\nsecond \u{e9}");
            tracing::error!(target: CRITICAL, "fatal");
        });
        assert_eq!(got.len(), 2, "one line per event: {got:?}");
        let first: Value = serde_json::from_str(&got[0]).expect("a JSON line");
        let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["asctime", "level", "message", "process", "created", "hostname", "app", "dc"]
        );
        assert!(starts_with_asctime(
            first["asctime"].as_str().expect("text")
        ));
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "first\nsecond \u{e9}");
        assert_eq!(first["process"], std::process::id());
        assert!(first["created"].as_f64().expect("float") > 1.6e9);
        assert_eq!(first["hostname"], Value::Null);
        assert_eq!(first["app"], "patroni");
        assert_eq!(first["dc"], 1);
        // Python's json.dumps spacing and ASCII escapes.
        assert!(got[0].starts_with("{\"asctime\": \""), "{}", got[0]);
        assert!(
            got[0].contains("\"level\": \"INFO\", \"message\": \"first\\nsecond \\u00e9\""),
            "{}",
            got[0]
        );
        let second: Value = serde_json::from_str(&got[1]).expect("a JSON line");
        assert_eq!(second["level"], "CRITICAL");
    }

    #[test]
    fn the_default_json_object_has_asctime_levelname_and_message() {
        let log = Log {
            kind: patrol_config::log::LogType::Json,
            format: LogFormat::Json(
                ["asctime", "levelname", "message"]
                    .iter()
                    .map(|n| JsonField {
                        attr: LogAttr::from_name(n),
                        key: n.to_string(),
                    })
                    .collect(),
            ),
            ..Log::default()
        };
        let got = lines(&log, || tracing::info!(slot = "s1", "created slot"));
        let v: Value = serde_json::from_str(&got[0]).expect("JSON");
        assert_eq!(v["levelname"], "INFO");
        assert_eq!(v["message"], "created slot slot=\"s1\"");
        assert_eq!(v.as_object().expect("object").len(), 3);
    }

    #[test]
    fn python_values() {
        assert_eq!(float_repr(123.0), "123.0");
        assert_eq!(float_repr(1700000000.25), "1700000000.25");
        assert_eq!(str_repr("a'b"), "\"a'b\"");
        assert_eq!(str_repr("a\\b\n"), "'a\\\\b\\n'");
        assert_eq!(
            json_dumps(&json!({"a": [1, "\u{1F600}"]})),
            r#"{"a": [1, "\ud83d\ude00"]}"#
        );
    }
}
