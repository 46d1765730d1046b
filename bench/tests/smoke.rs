//! A tiny run of the whole benchmark, so that it cannot rot: both providers, two concurrencies,
//! the registration rates and the in-flight measurement, against a real Prosody, and xup alone
//! behind a real ejabberd. It checks that every part reports and that no push was lost,
//! duplicated or refused; it asserts no timing.

use std::{path::Path, process::Command};

use serde_json::Value;

/// Each test runs an `xup-bench`, which picks its own loopback ports: one at a time, so two never
/// pick the same one (see `xup_testbed::free_port`).
static ONE_BENCH_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_small_benchmark_runs_to_the_end_and_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let lines = run_bench(
        &[
            ["--clients", "2", "--endpoints", "4", "--registrations", "8"].as_slice(),
            &["--messages", "40", "--warmup", "5", "--concurrency", "1,4"],
            &["--token-iterations", "50", "--in-flight", "20"],
            &["--faulty-percent", "25", "--faulty-concurrency", "4"],
        ]
        .concat(),
        out.path(),
    );
    let of_kind = |kind: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["kind"] == kind || l["measurement"]["kind"] == kind)
            .collect()
    };

    let pushes = of_kind("push");
    assert_eq!(pushes.len(), 4, "two providers at two concurrencies");
    for run in &pushes {
        assert_eq!(run["messages"], 40);
        assert_eq!(run["non_2xx"], 0, "{run}");
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["duplicated"], 0, "{run}");
        assert!(run["pushes_per_second"].as_f64().expect("rate") > 0.0);
        assert!(run["server"]["cpu_seconds"].as_f64().is_some());
    }
    for provider in ["xup", "mod_unified_push"] {
        assert_eq!(
            pushes.iter().filter(|r| r["provider"] == provider).count(),
            2,
            "{provider} measured at both concurrencies"
        );
    }
    assert!(
        pushes
            .iter()
            .filter(|r| r["provider"] == "xup")
            .all(|r| r["xup"]["peak_rss_mib"].as_f64().expect("xup's memory") > 0.0)
    );

    assert_eq!(of_kind("registrations").len(), 2);
    assert_eq!(of_kind("token_code").len(), 1);
    let faults = of_kind("faults");
    assert_eq!(faults.len(), 2, "all healthy, then with faults");
    for run in &faults {
        assert_eq!(run["non_2xx"], 0, "{run}");
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["duplicated"], 0, "{run}");
    }
    // One endpoint in four never answers: the faulty run counts the other three's messages.
    assert_eq!(faults[1]["faults"]["run"], "faulty");
    let counted = |run: &Value| run["pushes_per_second"].as_f64().expect("rate") > 0.0;
    assert!(faults.iter().all(|run| counted(run)));

    let in_flight = of_kind("in_flight");
    assert_eq!(in_flight.len(), 2, "over HTTP/2 and over HTTP/1.1");
    for run in in_flight {
        let result = &run["result"];
        assert_eq!(result["accepted"], 20, "{run}");
        assert_eq!(result["lost"], 0, "{run}");
        assert_eq!(result["duplicated"], 0, "{run}");
        // Answered at delivery.answer_within (3 s), not at the clients' leisure.
        let p99 = result["sender_ms"]["p99"].as_f64().expect("p99");
        assert!((2900.0..30_000.0).contains(&p99), "{run}");
    }
}

#[test]
fn a_small_run_behind_ejabberd_measures_its_erlang_vm() {
    let out = tempfile::tempdir().expect("tempdir");
    let lines = run_bench(
        &[
            ["--server", "ejabberd", "--providers", "xup"].as_slice(),
            &["--clients", "2", "--endpoints", "4", "--registrations", "8"],
            &["--messages", "40", "--warmup", "5", "--concurrency", "4"],
            &["--token-iterations", "0", "--in-flight", "0"],
            &["--faulty-percent", "0"],
        ]
        .concat(),
        out.path(),
    );
    let pushes: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "push").collect();
    assert_eq!(pushes.len(), 1, "one run, xup's");
    let run = pushes[0];
    assert_eq!(run["context"]["server"], "ejabberd");
    assert_eq!(run["non_2xx"], 0, "{run}");
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["duplicated"], 0, "{run}");
    // The server's memory is the Erlang VM's, tens of MiB; the ejabberdctl script that started it
    // is a shell of a few.
    let server_mib = run["server"]["peak_rss_mib"]
        .as_f64()
        .expect("server memory");
    assert!(
        server_mib > 20.0,
        "{server_mib} MiB is not ejabberd's VM: {run}"
    );

    // mod_unified_push is Prosody's: asking for it behind ejabberd is refused, not run.
    let refused = Command::new(env!("CARGO_BIN_EXE_xup-bench"))
        .args([
            "--server",
            "ejabberd",
            "--providers",
            "xup,mod_unified_push",
        ])
        .output()
        .expect("xup-bench runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only xup"));
}

#[test]
fn a_small_scaling_run_measures_every_setup_and_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let runs = run_bench(
        &[
            ["scaling", "--clients", "2", "--endpoints", "4"].as_slice(),
            &["--messages", "60", "--warmup", "5", "--concurrency", "4"],
        ]
        .concat(),
        out.path(),
    );
    let setups: Vec<&str> = runs.iter().filter_map(|r| r["setup"].as_str()).collect();
    assert_eq!(
        setups,
        ["1 xup, SQLite", "1 xup, PostgreSQL", "2 xup, PostgreSQL"]
    );
    for run in &runs {
        assert_eq!(run["accepted"], 60, "{run}");
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["duplicated"], 0, "{run}");
        // Reported for every part; not compared with anything: 60 pushes may cost a part less
        // than one clock tick (10 ms), which /proc reports as 0.
        for part in ["xup", "prosody", "postgres", "tool"] {
            assert!(
                run["cpu_us_per_push"][part].as_f64().is_some(),
                "{part}: {run}"
            );
        }
    }
}

#[test]
fn a_small_growth_run_draws_every_curve_on_both_engines() {
    let out = tempfile::tempdir().expect("tempdir");
    let plot = out.path().join("growth.svg");
    let points = run_bench(
        &[
            ["growth", "--sizes", "20,200", "--concurrency", "1,8"].as_slice(),
            &["--clients", "2", "--endpoints", "4", "--messages", "40"],
            &["--warmup", "5", "--registrations", "20"],
            &["--plot", plot.to_str().expect("a UTF-8 temporary path")],
        ]
        .concat(),
        out.path(),
    );
    for engine in ["SQLite", "PostgreSQL"] {
        let on = |curve: &str| -> Vec<&Value> {
            points
                .iter()
                .filter(|p| p["engine"] == engine && p["curve"] == curve)
                .collect()
        };
        let xs = |curve: &str| -> Vec<f64> {
            on(curve).iter().filter_map(|p| p["x"].as_f64()).collect()
        };
        assert_eq!(xs("held"), [20.0, 200.0], "{engine}");
        assert_eq!(xs("revocations"), [20.0, 200.0], "{engine}");
        assert_eq!(xs("concurrency"), [1.0, 8.0], "{engine}");
        assert_eq!(xs("matrix"), [1.0, 20.0], "{engine}");
        for point in on("held") {
            // The whole backlog arrived (the run fails otherwise), and the store holds it.
            assert!(point["values"]["backlog_s"].as_f64().expect("time") > 0.0);
            assert!(point["values"]["store_mib"].as_f64().expect("size") > 0.0);
        }
        for point in on("matrix") {
            assert_eq!(point["values"]["lost"], 0.0, "{point}");
        }
    }
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    for title in [
        "Held messages: store size",
        "Revocations: start-up",
        "Pushes",
    ] {
        assert!(svg.contains(title), "{title} drawn");
    }
}

/// Run `xup-bench` with `args` (its subcommand first, if any), measuring the xup built beside it
/// and writing its JSON lines into `out`, one bench at a time; the lines, each parsed. Panics if
/// the run fails.
fn run_bench(args: &[&str], out: &Path) -> Vec<Value> {
    let _turn = ONE_BENCH_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let bench = Path::new(env!("CARGO_BIN_EXE_xup-bench"));
    // `cargo test --workspace` builds xup's binary for xup's own tests, into the same directory.
    let xup = bench.with_file_name("xup");
    assert!(
        xup.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test does)",
        xup.display()
    );
    let json = out.join("results.jsonl");
    let status = Command::new(bench)
        .args(args)
        .arg("--xup")
        .arg(&xup)
        .arg("--json")
        .arg(&json)
        .status()
        .expect("xup-bench runs");
    assert!(status.success(), "xup-bench {args:?} failed: {status}");
    json_lines(&json)
}

/// The JSON lines a run appended to `path`, each parsed.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("JSON lines written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}
