//! `runledger bench rebuild`: seeds a scratch database (created beside DATABASE_URL's) with
//! synthetic job events, then times a rebuild of the `jobs` projection.

use std::{process::ExitCode, time::Instant};

use platform::settings::{Secret, Settings};
use projections::Projection;

pub async fn run(settings: &Settings, events: u64) -> anyhow::Result<ExitCode> {
    super::in_scratch_db(settings, "runledger_bench_rebuild", |url| async move {
        seed_and_rebuild(&url, events).await
    })
    .await
}

async fn seed_and_rebuild(url: &str, events: u64) -> anyhow::Result<ExitCode> {
    let pool = platform::db::connect(&Secret::new(url), 4).await?;
    platform::db::migrate(&pool).await?;
    let jobs = (events / 3).max(1) as i64;
    let seeding = Instant::now();
    // Per job: submitted, started, completed; 1,000 users.
    let job = "md5('job' || g)::uuid";
    let user = "md5('user' || (g % 1000))::uuid";
    let kinds = [
        (
            1,
            "JobSubmitted",
            format!(
                "json_build_object('JobSubmitted', json_build_object('job_id', {job}, 'user_id', {user}, \
             'task_type', 'noop', 'payload', json_build_object(), 'correlation_id', 'bench-' || g, 'run_at', null, \
             'max_attempts', 3, 'retry', json_build_object('base_ms', 1000, 'cap_ms', 60000), \
             'usage', json_build_object('user_id', {user}, 'period_start', '2026-11-01T00:00:00Z'), \
             'status', 'queued', 'submitted_at', '2026-11-10T12:00:00Z'))"
            ),
        ),
        (
            2,
            "JobStarted",
            "json_build_object('JobStarted', json_build_object('attempt', 1, 'worker_id', 'w1', \
             'started_at', '2026-11-10T12:00:01Z'))"
                .to_owned(),
        ),
        (
            3,
            "JobCompleted",
            format!(
                "json_build_object('JobCompleted', json_build_object('attempt', 1, 'result', json_build_object('ok', true), \
             'usage', json_build_object('user_id', {user}, 'period_start', '2026-11-01T00:00:00Z'), \
             'completed_at', '2026-11-10T12:00:02Z'))"
            ),
        ),
    ];
    for (seq, kind, payload) in kinds {
        sqlx::query(&format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT 'job', ({job})::text, {seq}, '{kind}', '1', {payload}, '{{}}'::json FROM generate_series(1, $1) g"
        ))
        .bind(jobs)
        .execute(&pool)
        .await?;
    }
    let seeded = jobs * 3;
    println!(
        "bench rebuild: seeded {seeded} events ({jobs} jobs) in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let mut last_shown = 0;
    let done = projections::rebuild::rebuild(&pool, Projection::Jobs, |p| {
        if p - last_shown >= seeded / 10 {
            last_shown = p;
            eprint!("\r  rebuilding: {}%", p * 100 / seeded.max(1));
        }
    })
    .await?;
    eprintln!();
    let (views,): (i64,) = sqlx::query_as("SELECT count(*) FROM job_views")
        .fetch_one(&pool)
        .await?;
    println!(
        "  rebuilt jobs       {} events in {:.2} s",
        done.events,
        done.elapsed.as_secs_f64()
    );
    println!(
        "  rate               {:.0} events/s",
        done.events as f64 / done.elapsed.as_secs_f64().max(1e-9)
    );
    println!("  of which reading   {:.2} s", done.reading.as_secs_f64());
    println!("  job views          {views}");
    pool.close().await;
    Ok(if views == jobs {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
