//! What every event enum shares: a stable type name and a version, stored beside the payload.

/// Declares an event enum whose variants wrap one struct each, named like the variant, with
/// `event_type` (the variant name) and `event_version`.
macro_rules! event_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        pub enum $name {
            $(
                #[allow(missing_docs)]
                $variant($variant),
            )+
        }

        impl $name {
            /// Every event type of this enum, in declaration order.
            pub const EVENT_TYPES: &'static [&'static str] = &[$(stringify!($variant)),+];

            /// The event's type name, stored as `event_type`.
            pub const fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            /// The version of the event's stored shape, stored as `event_version`.
            pub const fn event_version(&self) -> &'static str {
                crate::event::EVENT_VERSION
            }
        }

        $(
            impl From<$variant> for $name {
                fn from(e: $variant) -> Self {
                    Self::$variant(e)
                }
            }
        )+
    };
}

pub(crate) use event_enum;

/// The version of every event's shape today; the first change of a shape adds an upcaster.
pub const EVENT_VERSION: &str = "1";

/// An aggregate as a pure decision function and an evolution function: the rules, with no
/// I/O. The cqrs-es `Aggregate` impls (feature `cqrs`) only delegate to these.
pub trait Decider: Default {
    /// What the aggregate is asked to do.
    type Command;
    /// What it records.
    type Event: Clone;
    /// Why it refuses.
    type Error;

    /// The events that `command` produces in the current state, or a refusal. An empty list
    /// is an accepted no-op (a duplicate delivery).
    ///
    /// # Errors
    /// The aggregate's rejection.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one recorded event.
    fn evolve(&mut self, event: &Self::Event);

    /// The state after `events`, from the default state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}
