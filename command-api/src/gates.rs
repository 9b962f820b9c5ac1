//! Role gates: each route's allowed roles, checked as an extractor before the body's, so a
//! wrong role is 403 whatever the body holds (a malformed one included).

use axum::{extract::FromRequestParts, http::request::Parts};
use platform::{
    auth::{Principal, Role},
    problem::Problem,
};

use crate::state::AppState;

async fn gate(
    parts: &mut Parts,
    state: &AppState,
    allowed: &[Role],
    refusal: &str,
) -> Result<Principal, Problem> {
    let p = Principal::from_request_parts(parts, state).await?;
    if allowed.contains(&p.role) {
        Ok(p)
    } else {
        Err(Problem::forbidden(refusal))
    }
}

/// A customer: submits jobs.
pub struct Customer(pub Principal);

impl FromRequestParts<AppState> for Customer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        gate(
            parts,
            state,
            &[Role::Customer],
            "jobs are submitted with a customer token",
        )
        .await
        .map(Self)
    }
}

/// A job's owner (a customer; the job is checked to be theirs), or an admin: cancels.
pub struct Owner(pub Principal);

impl FromRequestParts<AppState> for Owner {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        gate(
            parts,
            state,
            &[Role::Customer, Role::Admin],
            "jobs are canceled by their owner",
        )
        .await
        .map(Self)
    }
}

/// A worker (or an admin): reports attempts.
pub struct Worker(pub Principal);

impl FromRequestParts<AppState> for Worker {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        gate(
            parts,
            state,
            &[Role::Worker, Role::Admin],
            "worker endpoints need a worker token",
        )
        .await
        .map(Self)
    }
}
