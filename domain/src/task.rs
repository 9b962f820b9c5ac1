//! Task types, queue namespaces and the Redis key contract (`jobs:<namespace>:<type>`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ParseError;

/// The task types the built-in executors run.
pub const BUILTIN_TASK_TYPES: &[&str] = &[
    "noop",
    "sleep",
    "http.request",
    "browser.screenshot",
    "browser.pdf",
    "browser.extract",
    "agent.run",
];

/// What a job asks a worker to do, such as `browser.screenshot`: dot-separated lowercase
/// segments of `[a-z0-9_]`, at most 64 bytes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("minLength" = 1, "maxLength" = 64, "pattern" = "^[a-z0-9_]+(\\.[a-z0-9_]+)*$"))]
pub struct TaskType(String);

impl TaskType {
    /// The longest accepted task type, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Parses the syntax of a task type; whether it is accepted is [`TaskCatalog`]'s call.
    ///
    /// # Errors
    /// [`ParseError::Length`] or [`ParseError::Charset`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ParseError::Length {
                field: "task_type",
                max: Self::MAX_LEN,
            });
        }
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !s.split('.').all(segment_ok) {
            return Err(ParseError::Charset { field: "task_type" });
        }
        Ok(Self(s.to_owned()))
    }

    /// The task type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskType {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<TaskType> for String {
    fn from(t: TaskType) -> String {
        t.0
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The task types a deployment accepts: the built-ins plus any configured for workers
/// written elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCatalog {
    accepted: Vec<TaskType>,
}

impl Default for TaskCatalog {
    fn default() -> Self {
        Self {
            accepted: BUILTIN_TASK_TYPES
                .iter()
                .filter_map(|t| TaskType::parse(t).ok())
                .collect(),
        }
    }
}

impl TaskCatalog {
    /// The built-ins plus `extra`.
    pub fn with_extra(extra: impl IntoIterator<Item = TaskType>) -> Self {
        let mut catalog = Self::default();
        for t in extra {
            if !catalog.accepted.contains(&t) {
                catalog.accepted.push(t);
            }
        }
        catalog
    }

    /// The accepted task types that are not built in.
    pub fn extra(&self) -> Vec<&str> {
        self.accepted
            .iter()
            .map(TaskType::as_str)
            .filter(|t| !BUILTIN_TASK_TYPES.contains(t))
            .collect()
    }

    /// Parses `s` and checks that some worker runs it.
    ///
    /// # Errors
    /// A syntax error, or [`ParseError::UnknownTaskType`].
    pub fn parse(&self, s: &str) -> Result<TaskType, ParseError> {
        let t = TaskType::parse(s)?;
        if self.accepted.contains(&t) {
            Ok(t)
        } else {
            Err(ParseError::UnknownTaskType(t.0))
        }
    }
}

/// A queue namespace in the Redis contract: `default`, `browser`, or a configured one.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("minLength" = 1, "maxLength" = 32, "pattern" = "^[a-z0-9_-]+$"))]
pub struct Namespace(String);

impl Namespace {
    /// Parses 1 to 32 bytes of `[a-z0-9_-]`; no `:` so keys stay unambiguous.
    ///
    /// # Errors
    /// [`ParseError::Length`] or [`ParseError::Charset`].
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 32 {
            return Err(ParseError::Length {
                field: "namespace",
                max: 32,
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ParseError::Charset { field: "namespace" });
        }
        Ok(Self(s.to_owned()))
    }

    /// `default`: a LIST queue plus the `scheduled` ZSET.
    pub fn default_ns() -> Self {
        Self("default".to_owned())
    }

    /// `browser`: a STREAM with a consumer group.
    pub fn browser() -> Self {
        Self("browser".to_owned())
    }

    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `jobs:<ns>:queue`, the LIST of ready envelopes.
    pub fn queue_key(&self) -> String {
        format!("jobs:{}:queue", self.0)
    }

    /// `jobs:<ns>:scheduled`, the ZSET of envelopes due later (score: epoch ms).
    pub fn scheduled_key(&self) -> String {
        format!("jobs:{}:scheduled", self.0)
    }

    /// `jobs:<ns>:stream`, the STREAM of envelopes (field `envelope`).
    pub fn stream_key(&self) -> String {
        format!("jobs:{}:stream", self.0)
    }

    /// `jobs:<ns>:group`, the consumer group on the stream.
    pub fn group_name(&self) -> String {
        format!("jobs:{}:group", self.0)
    }
}

impl TryFrom<String> for Namespace {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<Namespace> for String {
    fn from(n: Namespace) -> String {
        n.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Routes task types to namespaces by prefix: the longest matching prefix wins, and a type
/// no rule matches goes to `default`. The built-in rule sends `browser.*` to `browser`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceMap {
    rules: Vec<(String, Namespace)>,
}

impl Default for NamespaceMap {
    fn default() -> Self {
        Self {
            rules: vec![("browser.".to_owned(), Namespace::browser())],
        }
    }
}

impl NamespaceMap {
    /// The default map plus `prefix → namespace` rules.
    pub fn with_rules(rules: impl IntoIterator<Item = (String, Namespace)>) -> Self {
        let mut map = Self::default();
        map.rules.extend(rules);
        map
    }

    /// The namespace whose queue receives `task_type`.
    pub fn route(&self, task_type: &TaskType) -> Namespace {
        self.rules
            .iter()
            .filter(|(prefix, _)| task_type.as_str().starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or_else(Namespace::default_ns, |(_, ns)| ns.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tt(s: &str) -> TaskType {
        TaskType::parse(s).unwrap()
    }

    #[test]
    fn task_type_syntax() {
        assert!(TaskType::parse("browser.screenshot").is_ok());
        assert!(TaskType::parse("Browser.x").is_err());
        assert!(TaskType::parse("a..b").is_err());
        assert!(TaskType::parse(".a").is_err());
        assert!(TaskType::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn catalog_refuses_unknown_types() {
        let catalog = TaskCatalog::default();
        assert!(catalog.parse("noop").is_ok());
        assert_eq!(
            catalog.parse("image.resize"),
            Err(ParseError::UnknownTaskType("image.resize".into()))
        );
        let catalog = TaskCatalog::with_extra([tt("image.resize")]);
        assert!(catalog.parse("image.resize").is_ok());
    }

    #[test]
    fn browser_types_route_to_browser_and_others_to_default() {
        let map = NamespaceMap::default();
        assert_eq!(map.route(&tt("browser.pdf")).as_str(), "browser");
        assert_eq!(map.route(&tt("noop")).as_str(), "default");
        assert_eq!(map.route(&tt("browserish")).as_str(), "default");
        let map =
            NamespaceMap::with_rules([("agent.".into(), Namespace::parse("agents").unwrap())]);
        assert_eq!(map.route(&tt("agent.run")).as_str(), "agents");
    }

    #[test]
    fn redis_keys_follow_the_contract() {
        let ns = Namespace::default_ns();
        assert_eq!(ns.queue_key(), "jobs:default:queue");
        assert_eq!(ns.scheduled_key(), "jobs:default:scheduled");
        let b = Namespace::browser();
        assert_eq!(b.stream_key(), "jobs:browser:stream");
        assert_eq!(b.group_name(), "jobs:browser:group");
        assert!(Namespace::parse("a:b").is_err());
    }
}
