-- Projection `subscriptions`: each user's Stripe customer, linked at checkout (a user can
-- have one before any paid subscription exists).
CREATE TABLE stripe_customers
(
    user_id     uuid PRIMARY KEY,
    customer_id text   NOT NULL,
    position    bigint NOT NULL
);
