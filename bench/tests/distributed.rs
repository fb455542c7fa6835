//! The smoke run of `http --backend distributed`, on the MongoDB and Redis `scripts/test` starts
//! (`TEST_MONGO_URL`, `TEST_REDIS_URL`; fails without them, and the embedded pass of
//! `scripts/test` skips it: the test's name starts with `distributed::`, as the server's
//! multi-process suite's do).

mod common;

use common::bench;

fn services() -> (String, String) {
    match (
        std::env::var("TEST_MONGO_URL"),
        std::env::var("TEST_REDIS_URL"),
    ) {
        (Ok(m), Ok(r)) => (m, r),
        _ => panic!("this suite needs TEST_MONGO_URL and TEST_REDIS_URL; run ./scripts/test"),
    }
}

mod distributed {
    use super::{bench, common, services};

    /// `bench http --backend distributed` with tiny numbers: every scenario and the backend floor
    /// (a minimal MongoDB insert + Redis enqueue) are measured, the polls over two api processes
    /// beside the embedded polls of the same run, and the event delivery delay; timings are not
    /// judged here.
    #[test]
    fn bench_http_distributed_smoke_run() {
        let (mongo, redis) = services();
        let out = bench()
            .args([
                "http",
                "--backend",
                "distributed",
                "--mongo-url",
                &mongo,
                "--redis-url",
                &redis,
                "--requests",
                "20",
                "--connections",
                "2",
            ])
            .output()
            .expect("run");
        let (stdout, _) = common::succeeded(out);
        common::assert_contains(
            &stdout,
            &[
                "MongoDB + Redis, API role",
                "backend floor",
                "REST submit",
                "GraphQL submit",
                "REST poll",
                "GraphQL poll",
                "embedded REST poll, same run",
                "embedded GraphQL poll, same run",
                "of \"embedded REST poll, same run",
                "event delivery, updated_at to an api's relay",
            ],
        );
    }
}
