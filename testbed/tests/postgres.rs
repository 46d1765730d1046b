//! The throwaway PostgreSQL cluster starts, answers SQL on loopback, keeps what was committed
//! across a crash, and is gone with its handle.

use xup_testbed::Postgres;

#[tokio::test]
async fn a_cluster_starts_answers_and_survives_a_crash() {
    let mut postgres = Postgres::start().await;
    assert!(postgres.url().starts_with("postgres://xup@127.0.0.1:"));
    postgres.psql("CREATE TABLE kept (n integer); INSERT INTO kept VALUES (42)");
    postgres.restart().await;
    assert_eq!(postgres.psql("SELECT n FROM kept"), "42");
}
