//! The cqrs-es `Aggregate` impls: each delegates to the pure [`Decider`], with no services.

use cqrs_es::{Aggregate, DomainEvent, event_sink::EventSink};

use crate::{
    customer::{Customer, CustomerCommand, CustomerError, CustomerEvent},
    event::Decider,
    job::{Job, JobCommand, JobError, JobEvent},
    subscription::{Subscription, SubscriptionCommand, SubscriptionError, SubscriptionEvent},
    usage::{Usage, UsageCommand, UsageError, UsageEvent},
};

macro_rules! cqrs_aggregate {
    ($agg:ty, $type_name:literal, $cmd:ty, $event:ty, $err:ty) => {
        impl Aggregate for $agg {
            const TYPE: &'static str = $type_name;
            type Command = $cmd;
            type Event = $event;
            type Error = $err;
            type Services = ();

            async fn handle(
                &mut self,
                command: $cmd,
                _services: &(),
                sink: &EventSink<Self>,
            ) -> Result<(), $err> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: $event) {
                self.evolve(&event);
            }
        }

        impl DomainEvent for $event {
            fn event_type(&self) -> String {
                <$event>::event_type(self).to_owned()
            }

            fn event_version(&self) -> String {
                <$event>::event_version(self).to_owned()
            }
        }
    };
}

cqrs_aggregate!(Job, "job", JobCommand, JobEvent, JobError);
cqrs_aggregate!(Usage, "usage", UsageCommand, UsageEvent, UsageError);
cqrs_aggregate!(
    Subscription,
    "subscription",
    SubscriptionCommand,
    SubscriptionEvent,
    SubscriptionError
);
cqrs_aggregate!(
    Customer,
    "customer",
    CustomerCommand,
    CustomerEvent,
    CustomerError
);
