//! The `shopdesk` binary end to end: train → eval → classify, fine-tuning, bad data, bad models.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

fn shopdesk(root: &Path, args: &[&str]) -> Output {
    let model_dir = common::models_root().join("all-MiniLM-L6-v2");
    common::encoder_source(); // fails loudly when the encoder is missing
    Command::new(common::bin())
        .args(["--models-root"])
        .arg(root)
        .arg("--model-dir")
        .arg(&model_dir)
        .arg("--cache-dir")
        .arg(root.join("cache"))
        .arg("--offline")
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run shopdesk")
}

use common::{ok, text};

#[test]
fn train_eval_classify_on_bitext() {
    let bitext = common::data_file("bitext/bitext_customer_support.csv");
    let sst2_dev = common::data_file("sst2/dev.tsv");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = format!("bitext:{}", bitext.display());
    let oos = format!("sst2:{}", sst2_dev.display());
    ok(&shopdesk(
        root,
        &["train", "intent", "--data", &data, "--oos-data", &oos],
    ));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("heads/intent/manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["labels"].as_array().map(Vec::len), Some(27));
    assert!(manifest["threshold"]
        .as_f64()
        .is_some_and(|t| t > 0.0 && t < 1.0));
    assert_eq!(manifest["training"]["seed"], 42);

    let json = root.join("eval.json");
    let html = root.join("eval.html");
    let out = ok(&shopdesk(
        root,
        &[
            "eval",
            "intent",
            "--data",
            &data,
            "--json",
            json.to_str().unwrap_or_default(),
            "--html",
            html.to_str().unwrap_or_default(),
        ],
    ));
    assert!(out.contains("held-out 20% split"), "{out}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    let acc = rep["accuracy"].as_f64().unwrap_or(0.0);
    assert_eq!(rep["rows"], 902, "the held-out 20% of 4,514 rows");
    assert!(acc > 0.97, "held-out accuracy {acc}");
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.contains("Confusion matrix") && page.contains("track_order"));

    let out = ok(&shopdesk(
        root,
        &[
            "classify",
            "--json",
            "I need to cancel the order I placed yesterday",
            "what a dull, lifeless film",
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines[0]["intent"]["label"], "cancel_order", "{out}");
    assert_eq!(lines[0]["intent"]["out_of_scope"], false, "{out}");
    assert_eq!(lines[1]["intent"]["out_of_scope"], true, "{out}");
}

#[test]
fn finetune_runs_on_cpu_and_its_encoder_is_used() {
    let bitext = common::data_file("bitext/bitext_customer_support.csv");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = format!("bitext:{}", bitext.display());
    ok(&shopdesk(
        root,
        &[
            "train",
            "intent",
            "--data",
            &data,
            "--max-rows",
            "120",
            "--finetune",
            "--finetune-epochs",
            "1",
            "--finetune-batch",
            "8",
            "--epochs",
            "20",
        ],
    ));
    let dir = root.join("heads/intent");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(
        manifest["encoder"]["finetuned_weights"],
        "encoder.safetensors"
    );
    assert_eq!(manifest["training"]["finetune"], true);
    let weights = dir.join("encoder.safetensors");
    let sha = shopdesk::nlu::hub::sha256_file(&weights).expect("sha");
    assert_eq!(manifest["encoder"]["sha256"], sha.as_str());
    assert_ne!(
        sha,
        common::encoder().weights_sha256(),
        "fine-tuning must change the weights"
    );
    let out = ok(&shopdesk(
        root,
        &["classify", "--json", "how do I get my money back"],
    ));
    assert!(out.contains("\"intent\""), "{out}");
}

#[test]
fn bad_rows_are_reported_with_line_numbers_and_strict_stops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let csv = root.join("small.csv");
    // Real Bitext utterances, a few rows broken on purpose.
    let bitext = common::data_file("bitext/bitext_customer_support.csv");
    let ds = shopdesk::nlu::data::read(
        &bitext,
        &shopdesk::nlu::data::DataSpec::preset("bitext").expect("preset"),
        false,
    )
    .expect("read");
    let mut body = String::from("text,label\n");
    for label in ["track_order", "get_refund"] {
        for e in ds.examples.iter().filter(|e| e.label == label).take(30) {
            body += &format!("\"{}\",{}\n", e.text.replace('"', "\"\""), e.label);
        }
    }
    body += ",get_refund\n";
    body += "where is it,\n";
    std::fs::write(&csv, body).expect("write");
    let out = shopdesk(
        root,
        &[
            "train",
            "intent",
            "--data",
            csv.to_str().unwrap_or_default(),
            "--holdout",
            "0",
        ],
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("line 62: empty text"), "{err}");
    assert!(err.contains("line 63: label missing"), "{err}");

    let out = shopdesk(
        root,
        &[
            "train",
            "intent",
            "--strict",
            "--data",
            csv.to_str().unwrap_or_default(),
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("line 62") && err.contains("--strict"), "{err}");
}

#[test]
fn missing_and_corrupt_models_are_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let out = Command::new(common::bin())
        .args(["--offline", "--models-root"])
        .arg(root)
        .args(["classify", "hello"])
        .env("HF_HOME", root.join("hf"))
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("shopdesk models fetch"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A truncated weights file under the default name: caught by its checksum.
    let d = root.join("all-MiniLM-L6-v2");
    std::fs::create_dir_all(&d).expect("mkdir");
    let src = common::models_root().join("all-MiniLM-L6-v2");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), d.join(f)).expect("copy");
    }
    let weights = std::fs::read(src.join("model.safetensors")).expect("read");
    std::fs::write(d.join("model.safetensors"), &weights[..weights.len() / 2]).expect("write");
    let out = Command::new(common::bin())
        .args(["--offline", "--models-root"])
        .arg(root)
        .args(["classify", "hello"])
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("corrupt") && err.contains("models fetch --force"),
        "{err}"
    );
}

#[test]
fn train_learns_from_agents_relabels() {
    use shopdesk::store::{NewMessage, Store, StoreOptions};
    let reviews = common::data_file("womens-clothing-reviews/womens_clothing_reviews.csv");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let url = format!("sqlite://{}", root.join("shop.db").display());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let s = Store::connect(&StoreOptions::new(url.clone()))
            .await
            .expect("db");
        let c = s
            .create_conversation(None, "en", shopdesk::store::ConversationStatus::Bot, "{}")
            .await
            .expect("conv");
        for (text, first, last) in [
            ("the parcel came two weeks late", "positive", "negative"),
            ("fine, thanks", "negative", "neutral"),
        ] {
            let m = NewMessage {
                role: shopdesk::store::Role::Shopper,
                text: text.into(),
                ..NewMessage::default()
            };
            let id = s.add_message(&c.id, &m).await.expect("message");
            s.relabel(&id, None, Some(first), "alex")
                .await
                .expect("relabel");
            s.relabel(&id, None, Some(last), "sam")
                .await
                .expect("relabel");
        }
    });
    let out = shopdesk(
        root,
        &[
            "train",
            "sentiment",
            "--data",
            &format!("womens-clothing:{}", reviews.display()),
            "--max-rows",
            "300",
            "--epochs",
            "5",
            "--feedback",
            &url,
        ],
    );
    ok(&out);
    let err = text(&out.stderr);
    assert!(err.contains("feedback: 2 sentiment corrections"), "{err}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("heads/sentiment/manifest.json")).expect("manifest"),
    )
    .expect("json");
    let files = manifest["training"]["data_files"].to_string();
    assert!(files.contains("feedback.csv"), "{files}");
    // An intent head finds no intent corrections: trained anyway, with a warning.
    let bitext = common::data_file("bitext/bitext_customer_support.csv");
    let out = shopdesk(
        root,
        &[
            "train",
            "intent",
            "--data",
            &format!("bitext:{}", bitext.display()),
            "--max-rows",
            "200",
            "--epochs",
            "3",
            "--feedback",
            &url,
        ],
    );
    ok(&out);
    assert!(
        text(&out.stderr).contains("no intent corrections"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn score_killed_mid_run_resumes_with_every_row_exactly_once() {
    let reviews = common::data_file("womens-clothing-reviews/womens_clothing_reviews.csv");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // The first 1,200 real reviews (and the header).
    let mut rdr = csv::Reader::from_path(&reviews).expect("reviews");
    let input = root.join("reviews.csv");
    let mut w = csv::Writer::from_path(&input).expect("write");
    w.write_record(rdr.headers().expect("header"))
        .expect("header");
    let mut ids = Vec::new();
    for rec in rdr.records().take(1200) {
        let rec = rec.expect("row");
        if !rec.get(4).unwrap_or("").trim().is_empty() {
            ids.push(rec.get(0).unwrap_or("").to_string());
        }
        w.write_record(&rec).expect("row");
    }
    w.flush().expect("flush");
    let out = root.join("scored.csv");
    let progress = root.join("scored.csv.progress.json");
    let args = |resume: bool| {
        let mut c = std::process::Command::new(common::bin());
        c.args(["--models-root"])
            .arg(common::models_root())
            .arg("--offline")
            .arg("score")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(["--window", "100"]);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let mut child = args(false)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("score");
    // Kill it once a few windows are checkpointed.
    let t = std::time::Instant::now();
    loop {
        let p: serde_json::Value = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if p["input_rows"].as_u64().unwrap_or(0) >= 300 {
            break;
        }
        assert!(t.elapsed().as_secs() < 300, "no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    // Resume, and summarise by class: the report covers both runs' rows.
    let report = root.join("report");
    ok(&args(true)
        .args(["--group-by", "Class Name", "--report"])
        .arg(&report)
        .output()
        .expect("resume"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(summary["overall"]["count"].as_u64(), Some(ids.len() as u64));
    let groups = summary["groups"].as_array().expect("groups");
    assert!(groups.len() > 5, "{} classes", groups.len());
    let in_groups: u64 = groups.iter().filter_map(|g| g["count"].as_u64()).sum();
    assert_eq!(in_groups, ids.len() as u64);
    let html = std::fs::read_to_string(root.join("report.html")).expect("html");
    assert!(html.contains("<svg") && html.contains("Dresses"));
    let mut rdr = csv::Reader::from_path(&out).expect("output");
    let h = rdr.headers().expect("header").clone();
    assert_eq!(
        h.iter().rev().take(5).collect::<Vec<_>>(),
        vec![
            "p_positive",
            "p_neutral",
            "p_negative",
            "sentiment_score",
            "sentiment"
        ]
    );
    let got: Vec<String> = rdr
        .records()
        .map(|r| r.expect("row").get(0).unwrap_or("").to_string())
        .collect();
    assert_eq!(got.len(), ids.len(), "every scorable row once");
    assert_eq!(got, ids, "in input order, none twice, none lost");

    // The finished run summarised by another column: no scoring, the output unchanged.
    let before = std::fs::read(&out).expect("output");
    let by_age = root.join("by-age");
    ok(&args(true)
        .args(["--group-by", "Age", "--report"])
        .arg(&by_age)
        .output()
        .expect("report only"));
    assert_eq!(std::fs::read(&out).expect("output"), before);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("by-age.json")).expect("report"))
            .expect("json");
    assert_eq!(summary["overall"]["count"].as_u64(), Some(ids.len() as u64));
    // Without --report there is nothing to do: a clear error, nothing touched.
    let o = args(true).output().expect("resume again");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already finished"));
    assert_eq!(std::fs::read(&out).expect("output"), before);
}

/// A file of Chinese reviews is scored with the multilingual encoder and its own head, chosen
/// by the rows' language (the English encoder reads Chinese as unknown tokens); an English file
/// keeps the default encoder.
#[test]
fn score_routes_chinese_reviews_to_the_multilingual_encoder() {
    let multi = common::models_root().join("multilingual-e5-small");
    if !multi.join("model.safetensors").exists() {
        panic!(
            "the multilingual encoder is missing from {}: run `cargo run -- models fetch multilingual-e5-small` first (.ci/run does)",
            multi.display()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Our own sentences, written for this test.
    let zh = dir.path().join("zh.csv");
    std::fs::write(
        &zh,
        "review\n质量很好，非常满意，下次还会再买\n太差了，用了两天就坏了，要退货\n衣服很漂亮，尺码也合适\n客服态度恶劣，再也不买了\n",
    )
    .expect("write");
    let out = dir.path().join("zh-scored.csv");
    let run = Command::new(common::bin())
        .args(["--models-root"])
        .arg(common::models_root())
        .args(["--offline", "score"])
        .arg(&zh)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run shopdesk");
    ok(&run);
    let err = text(&run.stderr);
    assert!(err.contains("cmn 100%"), "{err}");
    assert!(
        err.contains("scoring with intfloat/multilingual-e5-small"),
        "{err}"
    );
    let scored = std::fs::read_to_string(&out).expect("scored");
    let labels: Vec<&str> = scored
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).expect("sentiment column"))
        .collect();
    assert_eq!(
        labels,
        ["positive", "negative", "positive", "negative"],
        "{scored}"
    );
    // English stays on the default encoder.
    let en = dir.path().join("en.csv");
    std::fs::write(
        &en,
        "review\nThe linen shirt is lovely and fits perfectly, I would buy it again\nTerrible quality, the seams came apart after one wash\n",
    )
    .expect("write");
    let run = Command::new(common::bin())
        .args(["--models-root"])
        .arg(common::models_root())
        .args(["--offline", "score"])
        .arg(&en)
        .arg("-o")
        .arg(dir.path().join("en-scored.csv"))
        .output()
        .expect("run shopdesk");
    ok(&run);
    let err = text(&run.stderr);
    assert!(err.contains("languages (first 2 rows): eng"), "{err}");
    assert!(!err.contains("multilingual"), "{err}");
}
