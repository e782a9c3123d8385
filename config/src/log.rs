//! The `log` section (Patroni's `PatroniLogger` settings), checked into [`Log`]: plain lines or
//! JSON objects, the layout (a Python logging format string read into [`FormatPiece`]s, or the
//! keys of the JSON object), the time format, the levels (global and per logger, Patroni's
//! logger names mapped to Patrol's tracing targets) and the log files with their rotation.
//!
//! Only reading and checking happens here, so that `--validate-config`, the start and a reload
//! all refuse a bad value with a message naming its key; the agent's `logging` module renders
//! the lines and writes them.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::env::parse_int;
use super::error::ConfigError;
use super::parse::{get, value_as_bool, warn_unknown, wrong_type, LOG_KEYS};
use super::source::describe;

type Result<T> = std::result::Result<T, ConfigError>;

/// Patroni's default layout, `2024-01-01 12:00:00,123 INFO: message`.
pub const DEFAULT_FORMAT: &str = "%(asctime)s %(levelname)s: %(message)s";
/// Patroni's default `file_size`: 25 MB.
pub const DEFAULT_FILE_SIZE: u64 = 25_000_000;
/// Patroni's default `file_num`.
pub const DEFAULT_FILE_NUM: u32 = 4;
/// Patroni's default `max_queue_size`.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1000;
/// The queue bound when `max_queue_size` is 0 or less (unbounded in Patroni): the queue is
/// allocated up front, so it needs a bound.
pub const UNBOUNDED_QUEUE_SIZE: usize = 100_000;
/// The log file's name in `dir`, as Patroni's (`os.path.join(dir, 'patroni.log')`); rotated
/// files are `patroni.log.1` (newest) to `patroni.log.<file_num>`.
pub const FILE_NAME: &str = "patroni.log";

/// The `log` section, checked. `Default` is what an absent section means.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub kind: LogType,
    /// `level` (default INFO).
    pub level: LogLevel,
    /// `traceback_level` (DEBUG or ERROR): checked, nothing to act on (no Python tracebacks).
    pub traceback_level: LogLevel,
    pub format: LogFormat,
    /// `dateformat`: a strftime format for `asctime`; `None` (also for `""`): Patroni's
    /// `2024-01-01 12:00:00,123`.
    pub dateformat: Option<String>,
    /// `static_fields`: added to every JSON object (after the format's keys).
    pub static_fields: Map<String, Value>,
    /// `max_queue_size`: lines waiting to be written to the log file; more are dropped (and
    /// counted in a warning), as Patroni drops records when its queue is full.
    pub max_queue_size: usize,
    /// `dir`: write `<dir>/patroni.log` (and only there) instead of stderr.
    pub dir: Option<PathBuf>,
    /// `mode`: the log files' permissions; `None`: `0666` less the umask, as Patroni.
    pub mode: Option<u32>,
    /// `file_size`: a file is rotated before a line would make it this big; 0: never.
    pub file_size: u64,
    /// `file_num`: rotated files kept; 0: never rotated.
    pub file_num: u32,
    /// `loggers`, in the order given.
    pub loggers: Vec<LoggerLevel>,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            kind: LogType::Plain,
            level: LogLevel::Info,
            traceback_level: LogLevel::Error,
            format: LogFormat::Plain(
                parse_plain(DEFAULT_FORMAT).expect("the default format is valid"),
            ),
            dateformat: None,
            static_fields: Map::new(),
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            dir: None,
            mode: None,
            file_size: DEFAULT_FILE_SIZE,
            file_num: DEFAULT_FILE_NUM,
            loggers: Vec::new(),
        }
    }
}

/// `log.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogType {
    Plain,
    Json,
}

/// A Python logging level. `TRACE` events of Patrol are printed as `DEBUG`; `CRITICAL` is the
/// level of the errors that end the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// Python's level name.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
            LogLevel::Critical => "CRITICAL",
        }
    }

    /// Python's level number (`levelno`).
    pub fn number(self) -> u8 {
        match self {
            LogLevel::Debug => 10,
            LogLevel::Info => 20,
            LogLevel::Warning => 30,
            LogLevel::Error => 40,
            LogLevel::Critical => 50,
        }
    }
}

/// A level as Python's `Logger.setLevel` takes it: a name (any case here), or a number.
/// `Ok(None)` is `NOTSET` (inherit).
fn parse_level(value: &Value) -> std::result::Result<Option<LogLevel>, ()> {
    let from_number = |n: i64| match n {
        i64::MIN..=0 => None,
        1..=10 => Some(LogLevel::Debug),
        11..=20 => Some(LogLevel::Info),
        21..=30 => Some(LogLevel::Warning),
        31..=40 => Some(LogLevel::Error),
        _ => Some(LogLevel::Critical),
    };
    match value {
        Value::String(s) => match s.trim().to_ascii_uppercase().as_str() {
            "NOTSET" => Ok(None),
            "DEBUG" => Ok(Some(LogLevel::Debug)),
            "INFO" => Ok(Some(LogLevel::Info)),
            "WARN" | "WARNING" => Ok(Some(LogLevel::Warning)),
            "ERROR" => Ok(Some(LogLevel::Error)),
            "CRITICAL" | "FATAL" => Ok(Some(LogLevel::Critical)),
            _ => Err(()),
        },
        Value::Number(n) => n.as_i64().map(from_number).ok_or(()),
        _ => Err(()),
    }
}

const LEVEL_NAMES: &str = "DEBUG, INFO, WARNING (WARN), ERROR, CRITICAL (FATAL)";

/// One entry of `log.loggers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerLevel {
    /// As written, e.g. `patroni.postgresql.callback_executor` or `patrol_agent::ha`.
    pub name: String,
    /// The tracing targets it stands for (see [`logger_targets`]).
    pub targets: Vec<String>,
    /// `None`: `NOTSET`, the logger follows `level`.
    pub level: Option<LogLevel>,
}

/// Patroni's loggers (Python module names) and the tracing targets (Rust module paths) that
/// do their work in Patrol. A Patroni logger not listed maps as its nearest listed parent
/// other than `patroni` itself (`patroni.dcs.etcd3` as `patroni.dcs`), so it may cover more
/// than in Patroni; one directly under `patroni` (`patroni.utils`) has no counterpart.
pub const PATRONI_LOGGERS: &[(&str, &[&str])] = &[
    // Every Patrol crate's target starts with `patrol`.
    ("patroni", &["patrol"]),
    ("patroni.__main__", &["patrol_agent::run"]),
    ("patroni.daemon", &["patrol_agent::run"]),
    ("patroni.ha", &["patrol_agent::ha", "patrol_ha"]),
    ("patroni.async_executor", &["patrol_agent::ha::runner"]),
    ("patroni.api", &["patrol_agent::api"]),
    ("patroni.request", &["patrol_agent::peer"]),
    ("patroni.config", &["patrol_config"]),
    ("patroni.validator", &["patrol_config"]),
    ("patroni.dcs", &["patrol_dcs"]),
    ("patroni.log", &["patrol_agent::logging"]),
    ("patroni.watchdog", &["patrol_agent::watchdog"]),
    ("patroni.quorum", &["patrol_ha::quorum"]),
    ("patroni.postgresql", &["patrol_agent::postgres"]),
    // Patroni's documentation still names it by its old place.
    ("patroni.postmaster", &["patrol_agent::postgres"]),
    (
        "patroni.postgresql.bootstrap",
        &["patrol_agent::postgres::bootstrap"],
    ),
    (
        "patroni.postgresql.callback_executor",
        &["patrol_agent::ha::callbacks"],
    ),
    (
        "patroni.postgresql.config",
        &["patrol_agent::postgres::conf"],
    ),
    (
        "patroni.postgresql.slots",
        &[
            "patrol_agent::postgres::slots",
            "patrol_agent::ha::runner::slots",
            "patrol_ha::slots",
            "patrol_ha::permanent_slots",
        ],
    ),
    ("patroni.postgresql.sync", &["patrol_ha::sync"]),
    // Patroni's HTTP client library; Patrol's HTTP clients and servers.
    ("urllib3", &["reqwest", "hyper", "hyper_util", "h2"]),
];

/// The tracing targets a `log.loggers` name stands for: a Patroni logger through
/// [`PATRONI_LOGGERS`]; a tracing target as is (`patrol_agent::ha`, `tokio_postgres`; dots
/// are accepted for `::` in Patrol's own crates, `patrol_agent.ha`). `None`: a Python logger
/// Patrol has no counterpart for (`kazoo.client`), or not a name at all.
pub fn logger_targets(name: &str) -> Option<Vec<String>> {
    let python_family = |root: &str| name == root || name.starts_with(&format!("{root}."));
    if python_family("patroni") || python_family("urllib3") {
        let mut probe = name;
        loop {
            if let Some((_, targets)) = PATRONI_LOGGERS.iter().find(|(n, _)| *n == probe) {
                return Some(targets.iter().map(|t| t.to_string()).collect());
            }
            probe = probe.rsplit_once('.')?.0;
            if probe == "patroni" {
                return None; // a module of Patroni's own with no counterpart
            }
        }
    }
    let target = if name.starts_with("patrol") {
        name.replace('.', "::")
    } else {
        name.to_string()
    };
    let segment_ok = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    target.split("::").all(segment_ok).then(|| vec![target])
}

/// `log.format`, as the output type reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    /// A plain line: text and fields, as Python's `logging.Formatter` prints them.
    Plain(Vec<FormatPiece>),
    /// The keys of a JSON object, in order (python-json-logger's): each an attribute and the
    /// key it is written under.
    Json(Vec<JsonField>),
}

/// A piece of a plain format.
#[derive(Debug, Clone, PartialEq)]
pub enum FormatPiece {
    Text(String),
    Field(LogAttr, Conversion),
}

/// A key of the JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonField {
    /// `None`: no such attribute: the key is written with `null`, as Patroni does.
    pub attr: Option<LogAttr>,
    pub key: String,
}

/// The attributes of a Python `LogRecord` a format can name, and what Patrol puts in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAttr {
    /// The time, per `dateformat`.
    Asctime,
    /// Seconds since the epoch (float).
    Created,
    /// The milliseconds of `created` (float).
    Msecs,
    /// Milliseconds since the agent started (float).
    RelativeCreated,
    Levelname,
    Levelno,
    /// The tracing target with `.` for `::` (`patrol_agent.ha.runner`).
    Name,
    /// The message with the event's fields.
    Message,
    /// The same as `message` (no separate arguments in Rust).
    Msg,
    /// The source file (relative to the workspace, as the compiler names it).
    Pathname,
    /// The source file's name.
    Filename,
    /// The last part of the module path (`runner`).
    Module,
    /// The module path (`patrol_agent::ha::runner`): Rust events carry no function name.
    FuncName,
    Lineno,
    Process,
    /// `MainProcess`, as Python's main process.
    ProcessName,
    /// The OS thread id.
    Thread,
    ThreadName,
    /// Always `None`/`null` in Patrol: no asyncio tasks, no exceptions, no `%`-arguments.
    TaskName,
    ExcInfo,
    ExcText,
    StackInfo,
    Args,
}

/// What an attribute holds, for the conversions that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    Text,
    Int,
    Float,
    /// Python's `None`.
    Null,
}

const ATTRS: &[(&str, LogAttr)] = &[
    ("asctime", LogAttr::Asctime),
    ("created", LogAttr::Created),
    ("msecs", LogAttr::Msecs),
    ("relativeCreated", LogAttr::RelativeCreated),
    ("levelname", LogAttr::Levelname),
    ("levelno", LogAttr::Levelno),
    ("name", LogAttr::Name),
    ("message", LogAttr::Message),
    ("msg", LogAttr::Msg),
    ("pathname", LogAttr::Pathname),
    ("filename", LogAttr::Filename),
    ("module", LogAttr::Module),
    ("funcName", LogAttr::FuncName),
    ("lineno", LogAttr::Lineno),
    ("process", LogAttr::Process),
    ("processName", LogAttr::ProcessName),
    ("thread", LogAttr::Thread),
    ("threadName", LogAttr::ThreadName),
    ("taskName", LogAttr::TaskName),
    ("exc_info", LogAttr::ExcInfo),
    ("exc_text", LogAttr::ExcText),
    ("stack_info", LogAttr::StackInfo),
    ("args", LogAttr::Args),
];

impl LogAttr {
    pub fn from_name(name: &str) -> Option<LogAttr> {
        ATTRS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn name(self) -> &'static str {
        ATTRS
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .expect("every attribute is in ATTRS")
    }

    pub fn kind(self) -> AttrKind {
        use LogAttr::*;
        match self {
            Created | Msecs | RelativeCreated => AttrKind::Float,
            Levelno | Lineno | Process | Thread => AttrKind::Int,
            TaskName | ExcInfo | ExcText | StackInfo | Args => AttrKind::Null,
            _ => AttrKind::Text,
        }
    }
}

/// A `%`-conversion: `%(name)-8s` is `left`, width 8, `Str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conversion {
    /// `-`: pad on the right.
    pub left: bool,
    /// `0`: pad numbers with zeros.
    pub zero: bool,
    /// `+`: always a sign on numbers.
    pub plus: bool,
    /// ` `: a space before positive numbers.
    pub space: bool,
    /// `#`: `0x`/`0o` before hex and octal numbers.
    pub alternate: bool,
    pub width: usize,
    /// `.N`: at most N characters of a string, N decimals of a float.
    pub precision: Option<usize>,
    pub kind: ConvKind,
}

/// The conversion letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvKind {
    /// `s`.
    #[default]
    Str,
    /// `r`, `a`: Python's `repr` (strings quoted).
    Repr,
    /// `d`, `i`, `u`.
    Int,
    /// `f`, `F`.
    Float,
    /// `x`.
    Hex,
    /// `X`.
    HexUpper,
    /// `o`.
    Octal,
}

impl ConvKind {
    fn from_char(c: char) -> Option<ConvKind> {
        Some(match c {
            's' => ConvKind::Str,
            'r' | 'a' => ConvKind::Repr,
            'd' | 'i' | 'u' => ConvKind::Int,
            'f' | 'F' => ConvKind::Float,
            'x' => ConvKind::Hex,
            'X' => ConvKind::HexUpper,
            'o' => ConvKind::Octal,
            _ => return None,
        })
    }

    /// Whether Python can apply it to an attribute of this kind (`%(levelname)d` fails on
    /// every line in Python: refused here).
    fn applies_to(self, kind: AttrKind) -> bool {
        match self {
            ConvKind::Str | ConvKind::Repr => true,
            ConvKind::Int | ConvKind::Float => matches!(kind, AttrKind::Int | AttrKind::Float),
            ConvKind::Hex | ConvKind::HexUpper | ConvKind::Octal => kind == AttrKind::Int,
        }
    }
}

/// Parses a Python `%`-style logging format into pieces. Errors name what is wrong: an unknown
/// attribute, a conversion Patrol does not do, a conversion that does not apply to the
/// attribute, a `%` that is not `%%` or `%(name)...`, or no field at all (Python refuses such
/// a format too).
pub fn parse_plain(format: &str) -> std::result::Result<Vec<FormatPiece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = format.char_indices().peekable();
    let mut fields = 0;
    while let Some((at, c)) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some((_, '%')) => text.push('%'),
            Some((_, '(')) => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, ')')) => break,
                        Some((_, ch)) => name.push(ch),
                        None => return Err(format!("'%(' at {at} has no closing ')'")),
                    }
                }
                let attr = LogAttr::from_name(&name).ok_or_else(|| {
                    format!(
                        "unknown attribute '{name}' in '%({name})'; known: {}",
                        ATTRS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )
                })?;
                let mut conv = Conversion::default();
                while let Some(&(_, flag)) = chars.peek() {
                    match flag {
                        '-' => conv.left = true,
                        '0' => conv.zero = true,
                        '+' => conv.plus = true,
                        ' ' => conv.space = true,
                        '#' => conv.alternate = true,
                        _ => break,
                    }
                    chars.next();
                }
                let digits = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
                    let mut n: Option<usize> = None;
                    while let Some(&(_, d)) = chars.peek() {
                        let Some(v) = d.to_digit(10) else { break };
                        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(v as usize));
                        chars.next();
                    }
                    n
                };
                conv.width = digits(&mut chars).unwrap_or(0);
                if chars.peek().is_some_and(|&(_, c)| c == '.') {
                    chars.next();
                    conv.precision = Some(digits(&mut chars).unwrap_or(0));
                }
                // Python accepts and ignores a length modifier.
                if chars
                    .peek()
                    .is_some_and(|&(_, c)| matches!(c, 'h' | 'l' | 'L'))
                {
                    chars.next();
                }
                let letter = match chars.next() {
                    Some((_, '*')) => {
                        return Err(format!(
                            "'*' in '%({name})' needs an argument: give a number"
                        ))
                    }
                    Some((_, l)) => l,
                    None => {
                        return Err(format!("'%({name})' has no conversion letter (s, d, f...)"))
                    }
                };
                conv.kind = ConvKind::from_char(letter).ok_or_else(|| {
                    format!("'%({name})...{letter}': Patrol knows the conversions s, r, a, d, i, u, f, F, x, X, o")
                })?;
                if !conv.kind.applies_to(attr.kind()) {
                    return Err(format!("'%({name})...{letter}': {name} is not a number"));
                }
                if !text.is_empty() {
                    pieces.push(FormatPiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(FormatPiece::Field(attr, conv));
                fields += 1;
            }
            _ => {
                return Err(format!(
                    "'%' at {at} must be followed by '(name)' or another '%'"
                ))
            }
        }
    }
    if !text.is_empty() {
        pieces.push(FormatPiece::Text(text));
    }
    if fields == 0 {
        return Err("no '%(name)s' field in the format".to_string());
    }
    Ok(pieces)
}

/// The keys of a JSON format given as a string: the names in `%(...)`, as python-json-logger
/// finds them.
fn json_names(format: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find("%(") {
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(0) => rest = &after[1..],
            Some(end) => {
                out.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Reads the `log` section (absent: the defaults). Warnings: unknown keys, a format Patroni
/// would not use either (a list with plain lines), JSON keys of no attribute, loggers Patrol
/// has no counterpart for.
pub(crate) fn parse_log(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Log> {
    const P: &str = "log";
    let mut log = Log::default();
    let section = match get(doc, P) {
        None => return Ok(log),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong_type(P.to_string(), "a mapping", other)),
    };
    warn_unknown(section, P, LOG_KEYS, &[], w);
    let key = |k: &str| format!("{P}.{k}");

    if let Some(v) = get(section, "type") {
        log.kind = match v.as_str() {
            Some("plain") => LogType::Plain,
            Some("json") => LogType::Json,
            _ => {
                return Err(ConfigError::invalid(
                    key("type"),
                    format!("expected plain or json, found {}", describe(v)),
                ))
            }
        };
    }
    if let Some(v) = get(section, "level") {
        log.level = parse_level(v)
            .map(|l| l.unwrap_or(LogLevel::Debug))
            .map_err(|()| {
                ConfigError::invalid(
                    key("level"),
                    format!("expected one of {LEVEL_NAMES}, found {}", describe(v)),
                )
            })?;
    }
    if let Some(v) = get(section, "traceback_level") {
        log.traceback_level = match parse_level(v) {
            Ok(Some(l @ (LogLevel::Debug | LogLevel::Error))) if v.is_string() => l,
            _ => {
                return Err(ConfigError::invalid(
                    key("traceback_level"),
                    format!("expected DEBUG or ERROR, found {}", describe(v)),
                ))
            }
        };
    }
    log.format = parse_format(section, log.kind, w)?;
    match get(section, "dateformat") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            check_dateformat(s).map_err(|m| ConfigError::invalid(key("dateformat"), m))?;
            log.dateformat = Some(s.clone());
        }
        Some(other) => return Err(wrong_type(key("dateformat"), "a string", other)),
    }
    match get(section, "static_fields") {
        None => {}
        Some(Value::Object(m)) => log.static_fields = m.clone(),
        Some(other) => return Err(wrong_type(key("static_fields"), "a mapping", other)),
    }
    if let Some(v) = get(section, "max_queue_size") {
        log.max_queue_size = match int_value(v) {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(UNBOUNDED_QUEUE_SIZE),
            Some(_) => UNBOUNDED_QUEUE_SIZE,
            None => return Err(wrong_type(key("max_queue_size"), "an integer", v)),
        };
    }
    match get(section, "dir") {
        None => {}
        Some(Value::String(s)) if s.trim().is_empty() => {}
        Some(Value::String(s)) => log.dir = Some(PathBuf::from(s)),
        Some(other) => return Err(wrong_type(key("dir"), "a string", other)),
    }
    if let Some(v) = get(section, "mode") {
        log.mode = Some(
            int_value(v)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= 0o777)
                .ok_or_else(|| {
                    wrong_type(
                        key("mode"),
                        "file permissions from 0 to 0777 (e.g. 0640 or 416)",
                        v,
                    )
                })?,
        );
    }
    if let Some(v) = get(section, "file_size") {
        log.file_size = int_value(v)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| wrong_type(key("file_size"), "a number of bytes (0 or more)", v))?;
    }
    if let Some(v) = get(section, "file_num") {
        log.file_num = int_value(v)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| wrong_type(key("file_num"), "a number of files (0 or more)", v))?;
    }
    match get(section, "loggers") {
        None => {}
        Some(Value::Object(m)) => {
            for (name, v) in m {
                let level = parse_level(v).map_err(|()| {
                    ConfigError::invalid(
                        format!("{P}.loggers.{name}"),
                        format!(
                            "expected one of {LEVEL_NAMES} or NOTSET, found {}",
                            describe(v)
                        ),
                    )
                })?;
                match logger_targets(name) {
                    Some(targets) => log.loggers.push(LoggerLevel {
                        name: name.clone(),
                        targets,
                        level,
                    }),
                    None => w.push(format!(
                        "log.loggers.{name}: Patrol has no such logger, ignored (Patroni's \
                         patroni.* loggers and Rust targets such as patrol_agent::ha are)"
                    )),
                }
            }
        }
        Some(other) => return Err(wrong_type(key("loggers"), "a mapping", other)),
    }
    if let Some(v) = get(section, "deduplicate_heartbeat_logs") {
        if value_as_bool(v).is_none() {
            return Err(wrong_type(
                key("deduplicate_heartbeat_logs"),
                "a boolean (true/false)",
                v,
            ));
        }
    }
    Ok(log)
}

/// An integer, also from a string as Patroni's `parse_int` reads it (`0640` is octal, `0x1A0`
/// hex); YAML's unquoted `0640` arrives as such a string.
fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_int(s),
        _ => None,
    }
}

fn parse_format(
    section: &Map<String, Value>,
    kind: LogType,
    w: &mut Vec<String>,
) -> Result<LogFormat> {
    const K: &str = "log.format";
    let value = get(section, "format");
    match kind {
        LogType::Plain => {
            let text = match value {
                None => DEFAULT_FORMAT,
                Some(Value::String(s)) => s.as_str(),
                Some(Value::Array(_)) => {
                    // Patroni warns and uses its default format.
                    w.push(format!(
                        "{K}: a list of fields is for log.type json; plain lines use the default format {DEFAULT_FORMAT:?}"
                    ));
                    DEFAULT_FORMAT
                }
                Some(other) => return Err(wrong_type(K.to_string(), "a string", other)),
            };
            parse_plain(text)
                .map(LogFormat::Plain)
                .map_err(|m| ConfigError::invalid(K, m))
        }
        LogType::Json => {
            let mut fields = Vec::new();
            match value {
                None => fields.extend(
                    json_names(DEFAULT_FORMAT)
                        .into_iter()
                        .map(|n| (n.clone(), n)),
                ),
                Some(Value::String(s)) => {
                    // python-json-logger checks the string as a Python format first.
                    parse_plain_shape(s).map_err(|m| ConfigError::invalid(K, m))?;
                    fields.extend(json_names(s).into_iter().map(|n| (n.clone(), n)));
                }
                Some(Value::Array(items)) => {
                    if items.is_empty() {
                        return Err(ConfigError::invalid(K, "should contain at least one item"));
                    }
                    for item in items {
                        match item {
                            Value::String(s) => fields.push((s.clone(), s.clone())),
                            Value::Object(m) if m.values().all(Value::is_string) => {
                                for (attr, renamed) in m {
                                    let renamed = renamed.as_str().unwrap_or_default();
                                    fields.push((attr.clone(), renamed.to_string()));
                                }
                            }
                            _ => return Err(ConfigError::invalid(
                                K,
                                "each item should be a string or a dictionary with string values",
                            )),
                        }
                    }
                }
                Some(other) => return Err(wrong_type(K.to_string(), "a string or a list", other)),
            }
            let mut out = Vec::new();
            for (attr, json_key) in fields {
                let known = LogAttr::from_name(&attr);
                if known.is_none() {
                    w.push(format!(
                        "{K}: '{attr}' is no log record attribute: its key is written with null"
                    ));
                }
                out.push(JsonField {
                    attr: known,
                    key: json_key,
                });
            }
            Ok(LogFormat::Json(out))
        }
    }
}

/// Python's check of a `%`-format string (`PercentStyle.validate`): at least one well-formed
/// `%(name)...` field. The names themselves are not checked (JSON keys of no attribute are
/// `null`).
fn parse_plain_shape(format: &str) -> std::result::Result<(), String> {
    let ok = format.match_indices("%(").any(|(i, _)| {
        let rest = &format[i + 2..];
        let Some(end) = rest.find(')') else {
            return false;
        };
        let name = &rest[..end];
        let spec = rest[end + 1..].trim_start_matches(['#', '0', '+', ' ', '-']);
        let spec = spec.trim_start_matches(|c: char| c.is_ascii_digit());
        let spec = match spec.strip_prefix('.') {
            Some(p) => p.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => spec,
        };
        !name.is_empty()
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            && spec.starts_with(|c: char| "diouxXeEfFgGcrsa%".contains(c))
    });
    if ok {
        Ok(())
    } else {
        Err("no '%(name)s' field in the format".to_string())
    }
}

/// A strftime format chrono can apply (an unknown `%` directive would fail every line).
fn check_dateformat(format: &str) -> std::result::Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "{format:?} has a % directive strftime does not know (use %Y, %m, %d, %H, %M, %S, %z, ...; %% for a %)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section(v: Value) -> Map<String, Value> {
        let mut doc = Map::new();
        doc.insert("log".into(), v);
        doc
    }

    fn parse(v: Value) -> (Result<Log>, Vec<String>) {
        let mut w = Vec::new();
        let r = parse_log(&section(v), &mut w);
        (r, w)
    }

    fn err(v: Value) -> String {
        match parse(v).0 {
            Err(e) => e.to_string(),
            Ok(l) => panic!("accepted: {l:?}"),
        }
    }

    #[test]
    fn the_default_is_patronis() {
        let (log, w) = parse(json!({}));
        let log = log.expect("valid");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(log, Log::default());
        assert_eq!(log.kind, LogType::Plain);
        assert_eq!(log.level, LogLevel::Info);
        assert_eq!((log.file_size, log.file_num), (25_000_000, 4));
        let LogFormat::Plain(p) = &log.format else {
            panic!("plain")
        };
        assert_eq!(
            p,
            &vec![
                FormatPiece::Field(LogAttr::Asctime, Conversion::default()),
                FormatPiece::Text(" ".into()),
                FormatPiece::Field(LogAttr::Levelname, Conversion::default()),
                FormatPiece::Text(": ".into()),
                FormatPiece::Field(LogAttr::Message, Conversion::default()),
            ]
        );
    }

    #[test]
    fn plain_formats_are_read_with_their_conversions() {
        let p = parse_plain(
            "%(asctime)s.%(msecs)03d %(levelname)-8s [%(pathname)s:%(lineno)d] 100%% %(message).5s",
        )
        .expect("valid");
        let fields: Vec<(LogAttr, Conversion)> = p
            .iter()
            .filter_map(|p| match p {
                FormatPiece::Field(a, c) => Some((*a, *c)),
                FormatPiece::Text(_) => None,
            })
            .collect();
        assert_eq!(fields[1].0, LogAttr::Msecs);
        assert_eq!(
            fields[1].1,
            Conversion {
                zero: true,
                width: 3,
                kind: ConvKind::Int,
                ..Conversion::default()
            }
        );
        assert_eq!(
            fields[2].1,
            Conversion {
                left: true,
                width: 8,
                ..Conversion::default()
            }
        );
        assert_eq!(fields[4].1.kind, ConvKind::Int);
        assert_eq!(fields[5].1.precision, Some(5));
        assert!(p.contains(&FormatPiece::Text("] 100% ".into())));
    }

    #[test]
    fn bad_plain_formats_are_refused_with_the_reason() {
        for (format, want) in [
            ("%(asctime)s %(hostname)s", "unknown attribute 'hostname'"),
            ("%(levelname)d", "levelname is not a number"),
            ("%(message)q", "conversions s, r"),
            ("%(message", "no closing ')'"),
            ("%(message)", "no conversion letter"),
            ("%(message)*s", "needs an argument"),
            ("100% %(message)s", "must be followed by '(name)'"),
            ("just text", "no '%(name)s' field"),
            ("%(process)-x %(exc_info)d", "exc_info is not a number"),
        ] {
            let e = err(json!({"format": format}));
            assert!(e.starts_with("invalid configuration: log.format: "), "{e}");
            assert!(e.contains(want), "{format}: {e}");
        }
    }

    #[test]
    fn json_keys_come_from_the_string_or_the_list() {
        let keys = |v: Value| -> Vec<(Option<LogAttr>, String)> {
            let (log, _) = parse(v);
            match log.expect("valid").format {
                LogFormat::Json(f) => f.into_iter().map(|f| (f.attr, f.key)).collect(),
                LogFormat::Plain(_) => panic!("json"),
            }
        };
        assert_eq!(
            keys(json!({"type": "json"})),
            vec![
                (Some(LogAttr::Asctime), "asctime".into()),
                (Some(LogAttr::Levelname), "levelname".into()),
                (Some(LogAttr::Message), "message".into()),
            ]
        );
        assert_eq!(
            keys(json!({"type": "json", "format": "%(levelname)s %(process)d"})),
            vec![
                (Some(LogAttr::Levelname), "levelname".into()),
                (Some(LogAttr::Process), "process".into()),
            ]
        );
        assert_eq!(
            keys(
                json!({"type": "json", "format": ["message", {"levelname": "level", "asctime": "@timestamp"}]})
            ),
            vec![
                (Some(LogAttr::Message), "message".into()),
                (Some(LogAttr::Levelname), "level".into()),
                (Some(LogAttr::Asctime), "@timestamp".into()),
            ]
        );
        let (log, w) = parse(json!({"type": "json", "format": ["message", "hostname"]}));
        assert!(log.is_ok());
        assert_eq!(
            w,
            vec!["log.format: 'hostname' is no log record attribute: its key is written with null"]
        );
        for (format, want) in [
            (json!([]), "at least one item"),
            (json!([{"a": 1}]), "string values"),
            (json!([["a"]]), "string values"),
            (json!(5), "expected a string or a list"),
            (json!("no fields"), "no '%(name)s' field"),
        ] {
            let e = err(json!({"type": "json", "format": format}));
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_list_format_with_plain_lines_is_the_default_with_a_warning() {
        let (log, w) = parse(json!({"format": ["message"]}));
        assert_eq!(log.expect("valid").format, Log::default().format);
        assert!(
            w[0].contains("a list of fields is for log.type json"),
            "{w:?}"
        );
    }

    #[test]
    fn values_are_checked() {
        for (v, want) in [
            (
                json!({"type": "JSON"}),
                "log.type: expected plain or json, found 'JSON'",
            ),
            (
                json!({"level": "verbose"}),
                "log.level: expected one of DEBUG",
            ),
            (json!({"level": true}), "log.level: expected one of DEBUG"),
            (
                json!({"traceback_level": "INFO"}),
                "log.traceback_level: expected DEBUG or ERROR",
            ),
            (
                json!({"dateformat": "%Y %Q"}),
                "log.dateformat: \"%Y %Q\" has a % directive",
            ),
            (
                json!({"dateformat": 5}),
                "log.dateformat: expected a string",
            ),
            (
                json!({"static_fields": "a=b"}),
                "log.static_fields: expected a mapping",
            ),
            (
                json!({"max_queue_size": "many"}),
                "log.max_queue_size: expected an integer",
            ),
            (json!({"dir": ["/x"]}), "log.dir: expected a string"),
            (json!({"mode": 1000}), "log.mode: expected file permissions"),
            (json!({"mode": "rw"}), "log.mode: expected file permissions"),
            (
                json!({"file_size": -1}),
                "log.file_size: expected a number of bytes",
            ),
            (
                json!({"file_size": "25MB"}),
                "log.file_size: expected a number of bytes",
            ),
            (
                json!({"file_num": 1.5}),
                "log.file_num: expected a number of files",
            ),
            (
                json!({"loggers": {"patroni.ha": "LOUD"}}),
                "log.loggers.patroni.ha: expected one of",
            ),
            (
                json!({"loggers": ["patroni"]}),
                "log.loggers: expected a mapping",
            ),
            (
                json!({"deduplicate_heartbeat_logs": "maybe"}),
                "log.deduplicate_heartbeat_logs: expected a boolean",
            ),
            (json!("DEBUG"), "log: expected a mapping"),
        ] {
            let e = err(v.clone());
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn files_levels_and_numbers_as_patroni_reads_them() {
        let (log, w) = parse(json!({
            "level": "warning", "traceback_level": "debug", "dir": "/var/log/patroni",
            "mode": "0640", "file_size": "1000", "file_num": 0, "max_queue_size": -1,
            "dateformat": "", "static_fields": {"app": "patroni"},
            "deduplicate_heartbeat_logs": true,
        }));
        let log = log.expect("valid");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(log.level, LogLevel::Warning);
        assert_eq!(log.traceback_level, LogLevel::Debug);
        assert_eq!(log.dir, Some(PathBuf::from("/var/log/patroni")));
        assert_eq!(log.mode, Some(0o640));
        assert_eq!((log.file_size, log.file_num), (1000, 0));
        assert_eq!(log.max_queue_size, UNBOUNDED_QUEUE_SIZE);
        assert_eq!(log.dateformat, None);
        assert_eq!(log.static_fields["app"], "patroni");
        for (mode, want) in [
            (json!(416), 0o640),
            (json!("0x1A0"), 0o640),
            (json!("384"), 0o600),
        ] {
            assert_eq!(
                parse(json!({"mode": mode})).0.expect("valid").mode,
                Some(want)
            );
        }
        for (level, want) in [
            ("FATAL", LogLevel::Critical),
            ("WARN", LogLevel::Warning),
            ("NOTSET", LogLevel::Debug),
        ] {
            assert_eq!(parse(json!({"level": level})).0.expect("valid").level, want);
        }
    }

    #[test]
    fn loggers_map_to_tracing_targets() {
        let (log, w) = parse(json!({"loggers": {
            "patroni.postgresql.callback_executor": "DEBUG",
            "patroni.dcs.etcd3": "WARNING",
            "urllib3.connectionpool": 40,
            "patrol_agent.api": "INFO",
            "tokio_postgres": "NOTSET",
            "kazoo.client": "DEBUG",
            "patroni.utils": "DEBUG",
            "patroni.postgresql.postmaster": "ERROR",
            "not a name": "DEBUG",
        }}));
        let log = log.expect("valid");
        let got: Vec<(&str, Vec<&str>, Option<LogLevel>)> = log
            .loggers
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.targets.iter().map(String::as_str).collect(),
                    l.level,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "patroni.postgresql.callback_executor",
                    vec!["patrol_agent::ha::callbacks"],
                    Some(LogLevel::Debug)
                ),
                (
                    "patroni.dcs.etcd3",
                    vec!["patrol_dcs"],
                    Some(LogLevel::Warning)
                ),
                (
                    "urllib3.connectionpool",
                    vec!["reqwest", "hyper", "hyper_util", "h2"],
                    Some(LogLevel::Error)
                ),
                (
                    "patrol_agent.api",
                    vec!["patrol_agent::api"],
                    Some(LogLevel::Info)
                ),
                ("tokio_postgres", vec!["tokio_postgres"], None),
                (
                    "patroni.postgresql.postmaster",
                    vec!["patrol_agent::postgres"],
                    Some(LogLevel::Error)
                ),
            ]
        );
        assert_eq!(w.len(), 3, "{w:?}");
        for (warning, name) in w
            .iter()
            .zip(["kazoo.client", "patroni.utils", "not a name"])
        {
            assert!(
                warning.starts_with(&format!(
                    "log.loggers.{name}: Patrol has no such logger, ignored"
                )),
                "{warning}"
            );
        }
    }
}
