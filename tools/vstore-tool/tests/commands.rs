//! Every subcommand run as a user would, checked against the library and
//! against brute force.

mod common;

use common::{
    fails, fails_with, npy_f32, npy_u64, npy_vec, ok, parquet_file, tool, usage_fails, Data, PqCol,
    DIM, ROWS,
};
use serde_json::Value;
use vstore::{Query, Store, UserInputs};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn user() -> Vec<f32> {
    (0..DIM)
        .map(|j| ((j * 5 % 11) as f32 - 5.0) / 8.0)
        .collect()
}

#[test]
fn inspect_summaries_item_and_json() {
    let d = Data::new();
    d.build("s");
    let v = json(&ok(&["inspect", &d.p("s"), "--json"]));
    assert_eq!(v["items"], 300);
    assert_eq!(v["snapshot"], 1);
    assert_eq!(v["snapshots"][0]["embeddings"][0], "prerank@v1");
    assert_eq!(v["snapshots"][0]["bundles"][0], "prerank@v1");
    let col = |name: &str| {
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let cat = col("category");
    let present: Vec<i32> = d.category.iter().flatten().copied().collect();
    assert_eq!(cat["kind"], "categorical");
    assert_eq!(cat["missing"], (ROWS - present.len()) as u64);
    assert_eq!(cat["distinct"], 7);
    assert_eq!(cat["min"], 0.0);
    assert_eq!(cat["max"], 6.0);
    let price = col("price");
    let p: Vec<f64> = d.price.iter().flatten().map(|&x| x as f32 as f64).collect();
    let mean = p.iter().sum::<f64>() / p.len() as f64;
    assert_eq!(
        price["min"],
        p.iter().cloned().fold(f64::INFINITY, f64::min)
    );
    assert_eq!(price["max"], p.iter().cloned().fold(0.0, f64::max));
    assert!((price["mean"].as_f64().unwrap() - mean).abs() < 1e-9 * mean);
    assert_eq!(col("ctr_1d")["kind"], "stat");
    assert_eq!(v["embeddings"][0]["rows"], 300);
    assert_eq!(v["embeddings"][0]["dtype"], "f16");
    assert_eq!(
        v["bundles"][0]["heads"],
        serde_json::json!(["click", "like", "watch_time"])
    );
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 6);
    for f in files {
        let len = std::fs::metadata(d.path("s").join(f["name"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(f["bytes"], len);
        assert_eq!(f["format_version"], vstore::FORMAT_VERSION);
    }
    assert_eq!(
        v["format_versions"],
        serde_json::json!([vstore::FORMAT_VERSION])
    );

    let text = ok(&["inspect", &d.p("s")]);
    let v = vstore::FORMAT_VERSION;
    for want in [
        format!("(format version {v}; this build writes {v})").as_str(),
        "snapshots:",
        "columns (over live items):",
        "category",
        "prerank@v1",
        "model bundles:",
        "files:",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }

    let id = d.ids[1];
    let item = json(&ok(&[
        "inspect",
        &d.p("s"),
        "--id",
        &id.to_string(),
        "--json",
    ]));
    assert_eq!(item["id"], id);
    let vals: Vec<f32> = item["embeddings"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(vals, common::vector(id, 0));
    let c = item["columns"].as_array().unwrap();
    assert_eq!(c[0]["value"], d.category[1].unwrap());
    assert_eq!(
        c[1]["value"].as_f64().unwrap() as f32,
        d.price[1].unwrap() as f32
    );
    let text = ok(&["inspect", &d.p("s"), "--id", &id.to_string()]);
    assert!(text.contains(&format!("item {id} in snapshot 1")), "{text}");
    let e = fails(&["inspect", &d.p("s"), "--id", "5"]);
    assert!(e.contains("item id 5 is not in snapshot 1"), "{e}");
    let e = fails(&["inspect", &d.p("s"), "--snapshot", "9"]);
    assert!(e.contains("snapshot 9 is not retained"), "{e}");
}

#[test]
fn two_tower_query_matches_brute_force() {
    let d = Data::new();
    d.build("s");
    npy_vec(&d.path("user.npy"), &user());
    // Candidates from stdin: some duplicates and unknown ids.
    let mut cands: Vec<u64> = d.ids.iter().copied().step_by(3).collect();
    cands.push(d.ids[0]);
    cands.push(17);
    let text: String = cands.iter().map(|c| format!("{c}\n")).collect();
    let out = tool()
        .args([
            "query",
            &d.p("s"),
            "--embedding",
            "prerank@v1",
            "--user",
            &d.p("user.npy"),
            "--candidates",
            "-",
            "-k",
            "7",
            "--json",
        ])
        .write_stdin(text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let u = user();
    let mut want: Vec<(f64, u64)> = d
        .ids
        .iter()
        .step_by(3)
        .map(|&id| {
            let s: f64 = common::vector(id, 0)
                .iter()
                .zip(&u)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            (s, id)
        })
        .collect();
    want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 7);
    for (h, w) in hits.iter().zip(&want) {
        assert_eq!(h["id"], w.1);
        assert!(
            (h["score"].as_f64().unwrap() - w.0).abs() < 1e-4,
            "{h} {w:?}"
        );
    }
    assert_eq!(v["not_found"], serde_json::json!([17]));
    assert_eq!(v["scored"], 100);
    // The same as a text table from a JSON user vector and a text file.
    std::fs::write(d.path("user.json"), serde_json::to_string(&u).unwrap()).unwrap();
    std::fs::write(
        d.path("c.txt"),
        cands
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )
    .unwrap();
    let t = ok(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("c.txt"),
        "-k",
        "3",
        "--repeat",
        "5",
    ]);
    assert!(t.contains(&format!("1  {}", want[0].1)), "{t}");
    assert!(t.contains("1 not found [17]"), "{t}");
    assert!(t.contains("latency over 5 runs"), "{t}");
    // The same hits with the background prefault and the store locked in
    // memory (or a refusal naming RLIMIT_MEMLOCK where it does not fit).
    let base = [
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("c.txt"),
        "-k",
        "3",
        "--json",
    ];
    let plain = json(&ok(&base));
    let guarded = tool()
        .args(base)
        .args(["--prefault", "background", "--mlock"])
        .output()
        .unwrap();
    if guarded.status.success() {
        let g = json(&String::from_utf8_lossy(&guarded.stdout));
        assert_eq!(g["hits"], plain["hits"]);
    } else {
        let e = String::from_utf8_lossy(&guarded.stderr);
        assert!(e.contains("RLIMIT_MEMLOCK"), "{e}");
    }
    let e = usage_fails(&[&base[..], &["--prefault", "eager"]].concat());
    assert!(e.contains("off") && e.contains("background"), "{e}");
    // Version skew and bad vectors are refused with names.
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v2",
        "--user",
        &d.p("user.npy"),
        "--all",
    ]);
    assert!(
        e.contains("version skew") && e.contains("prerank@v1"),
        "{e}"
    );
    npy_vec(&d.path("short.npy"), &[1.0; 8]);
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("short.npy"),
        "--all",
    ]);
    assert!(e.contains("8") && e.contains("64"), "{e}");
    std::fs::write(d.path("bad.json"), "[1.0, \"x\"]").unwrap();
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("bad.json"),
        "--all",
    ]);
    assert!(e.contains("bad.json") && e.contains("vector[1]"), "{e}");
    let e = usage_fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.npy"),
    ]);
    assert!(e.contains("--candidates"), "{e}");
}

#[test]
fn three_tower_and_filtered_queries_equal_the_library() {
    let d = Data::new();
    d.build("s");
    let u = user();
    std::fs::write(
        d.path("user.json"),
        serde_json::json!({"vector": u}).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.path("inputs.json"),
        serde_json::json!({
            "dense": {"user_stats": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05]},
            "by_item": {"user_category_ctr": {"1": [0.05], "3": [0.12]}},
        })
        .to_string(),
    )
    .unwrap();
    // The query, with its user inputs given as `inputs` (a file or JSON).
    let (store, user) = (d.p("s"), d.p("user.json"));
    let query = |inputs: &str| {
        json(&ok(&[
            "query",
            &store,
            "--embedding",
            "prerank@v1",
            "--user",
            &user,
            "--all",
            "-k",
            "20",
            "--three-tower",
            "--inputs",
            inputs,
            "--heads",
            "--where",
            "category not in 2",
            "--where",
            "price between 300 600",
            "--json",
        ]))
    };
    let v = query(&d.p("inputs.json"));
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    let inputs = UserInputs::new()
        .dense(
            "user_stats",
            vec![0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05],
        )
        .by_item("user_category_ctr", [(1, vec![0.05]), (3, vec![0.12])]);
    let f =
        vstore::Filter::not_in("category", [2]).and(vstore::Filter::range("price", 300.0, 600.0));
    let want = snap
        .query(
            &Query::full_scan("prerank@v1", &u, 20)
                .filter(&f)
                .three_tower(&inputs)
                .with_heads(),
        )
        .unwrap();
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), want.hits.len());
    assert!(!hits.is_empty());
    for (i, (h, w)) in hits.iter().zip(&want.hits).enumerate() {
        assert_eq!(h["id"], w.id);
        assert_eq!(h["score"].as_f64().unwrap() as f32, w.score);
        for (n, x) in want.head_names.iter().zip(want.heads_of(i)) {
            assert_eq!(h["heads"][n].as_f64().unwrap() as f32, *x);
        }
    }
    assert_eq!(v["filtered_out"], want.filtered_out);
    assert_eq!(v["filtered"], serde_json::json!(want.filtered));
    assert_eq!(v["kind"], "three-tower");
    // The same inputs given inline (as --fusion may be).
    let inline = std::fs::read_to_string(d.path("inputs.json")).unwrap();
    assert_eq!(query(&inline)["hits"], v["hits"]);
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--all",
        "--three-tower",
        "--inputs",
        "{\"dense\": ",
    ]);
    assert!(e.contains("--inputs: not valid JSON"), "{e}");
    // With candidate ids, the ones the filter removed are listed.
    let cands: Vec<u64> = d.ids.iter().copied().step_by(2).collect();
    std::fs::write(
        d.path("cands.txt"),
        cands.iter().map(|c| format!("{c}\n")).collect::<String>(),
    )
    .unwrap();
    let v = json(&ok(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("cands.txt"),
        "-k",
        "20",
        "--where",
        "category not in 2",
        "--json",
    ]));
    let f2 = vstore::Filter::not_in("category", [2]);
    let want = snap
        .query(&Query::ids("prerank@v1", &u, &cands, 20).filter(&f2))
        .unwrap();
    assert!(!want.filtered.is_empty());
    assert_eq!(v["filtered"], serde_json::json!(want.filtered));
    assert_eq!(v["filtered_out"], want.filtered.len());
    // A budget, the feature log and the stage timings over runs.
    let v = json(&ok(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("cands.txt"),
        "-k",
        "5",
        "--three-tower",
        "--inputs",
        &d.p("inputs.json"),
        "--max-items",
        "30",
        "--log-features",
        "--repeat",
        "3",
        "--json",
    ]));
    let want = snap
        .query(
            &Query::ids("prerank@v1", &u, &cands, 5)
                .three_tower(&inputs)
                .budget(vstore::Budget::Items(30))
                .log_features(),
        )
        .unwrap();
    assert_eq!(v["over_budget"], want.over_budget);
    assert_eq!(
        v["over_budget_ids"],
        serde_json::json!(want.over_budget_ids)
    );
    assert_eq!(want.over_budget, cands.len() - 30);
    let log = want.features.as_ref().unwrap();
    for (i, h) in v["hits"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h["id"], want.hits[i].id);
        let f = &h["features"];
        let stats: Vec<f32> = (f["cross_inputs"]["user_stats"].as_array().unwrap())
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(stats, [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05]);
        let click = f["head_logits"]["click"].as_f64().unwrap() as f32;
        assert_eq!(click, log.head_logits_of(i)[0]);
    }
    let stages = v["stages_us"].as_object().unwrap();
    for s in [
        "resolve", "gather", "cross", "upper", "heads", "topk", "total",
    ] {
        assert!(stages[s].as_f64().unwrap() > 0.0, "{s}: {stages:?}");
    }
    let text = ok(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("cands.txt"),
        "-k",
        "3",
        "--three-tower",
        "--inputs",
        &d.p("inputs.json"),
        "--max-multiply-adds",
        "2000000",
        "--log-features",
        "--repeat",
        "2",
    ]);
    assert!(text.contains("over budget:"), "{text}");
    assert!(text.contains("features of rank"), "{text}");
    assert!(text.contains("stages (medians): "), "{text}");
    // A feature log needs a three-tower query; one budget at a time.
    let e = usage_fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--all",
        "--log-features",
    ]);
    assert!(e.contains("--three-tower"), "{e}");
    let e = usage_fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--all",
        "--max-items",
        "3",
        "--max-multiply-adds",
        "9",
    ]);
    assert!(e.contains("--max-multiply-adds"), "{e}");
    // A missing user input is named.
    std::fs::write(d.path("none.json"), "{}").unwrap();
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--all",
        "--three-tower",
        "--inputs",
        &d.p("none.json"),
    ]);
    assert!(e.contains("user_stats"), "{e}");
    let e = usage_fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--all",
        "--where",
        "category > 3",
    ]);
    assert!(e.contains("category > 3"), "{e}");
}

#[test]
fn a_dropped_version_is_not_taken_again_unless_the_same_model() {
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    let before = Store::open(&store).unwrap().snapshot();
    let v1_of_3 = before.get_embedding(d.ids[3], "prerank@v1").unwrap();
    drop(before);
    ok(&["drop-embedding", &store, "prerank@v1"]);
    // Another model's vectors under the dropped name: refused before the
    // lock is taken (the library refuses too), nothing published.
    let other: Vec<f32> = d.ids.iter().flat_map(|&id| common::vector(id, 5)).collect();
    npy_f32(&d.path("other.npy"), &other, DIM);
    let ids = d.p("ids.npy");
    let other = format!("prerank@v1:f16={}", d.p("other.npy"));
    let e = fails(&[
        "add-embedding",
        &store,
        "--ids",
        &ids,
        "--embedding",
        &other,
    ]);
    assert!(
        e.contains("prerank@v1 was dropped in snapshot 2") && e.contains("--same-model-as-dropped"),
        "{e}"
    );
    assert_eq!(Store::open(&store).unwrap().snapshot().number(), 2);
    let out = ok(&["inspect", &store]);
    assert!(out.contains("vstore.dropped_versions"), "{out}");
    // The dropped model's own vectors again, said so.
    let same = format!("prerank@v1:f16={}", d.p("emb.npy"));
    let out = ok(&[
        "add-embedding",
        &store,
        "--ids",
        &ids,
        "--embedding",
        &same,
        "--same-model-as-dropped",
    ]);
    assert!(out.contains("published snapshot 3"), "{out}");
    let snap = Store::open(&store).unwrap().snapshot();
    assert!(snap.dropped_versions().unwrap().is_empty());
    assert_eq!(snap.get_embedding(d.ids[3], "prerank@v1").unwrap(), v1_of_3);
    // The record's key (any vstore. key) is not the user's to set.
    let args = d.build_args(
        "t",
        "ids.npy",
        "emb.npy",
        &["--metadata", "vstore.dropped_versions={}"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = fails_with(2, &args);
    assert!(e.contains("the library's"), "{e}");
    assert!(!d.path("t").exists());
}

#[test]
fn lifecycle_versions_stats_items_compaction_gc_diff_verify() {
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    // A rollout: v2 beside v1 with its bundle, then v1 retired.
    let v2: Vec<f32> = d.ids.iter().flat_map(|&id| common::vector(id, 1)).collect();
    npy_f32(&d.path("v2.npy"), &v2, DIM);
    let (json2, weights2) = vstore_tool::synth::bundle("prerank", "v2");
    std::fs::create_dir_all(d.path("model2")).unwrap();
    std::fs::write(d.path("model2/model.json"), json2).unwrap();
    std::fs::write(d.path("model2/weights.safetensors"), weights2).unwrap();
    let out = ok(&[
        "add-embedding",
        &store,
        "--ids",
        &d.p("ids.npy"),
        "--embedding",
        &format!("prerank@v2:f16={}", d.p("v2.npy")),
        "--model",
        &d.p("model2"),
        "--precompute",
        "f16",
    ]);
    assert!(
        out.contains("published snapshot 2") && out.contains("embeddings [prerank@v1, prerank@v2]"),
        "{out}"
    );
    let out = ok(&["drop-embedding", &store, "prerank@v1"]);
    assert!(
        out.contains("published snapshot 3")
            && out.contains("embeddings [prerank@v2]")
            && out.contains("bundles [prerank@v2]"),
        "{out}"
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(
        snap.get_embedding(d.ids[9], "prerank@v2").unwrap(),
        common::vector(d.ids[9], 1)
    );
    assert!(snap.model_is_precomputed("prerank@v2"));

    // update-stats from Parquet: only the statistics file is new.
    let sel = &d.ids[..50];
    parquet_file(
        &d.path("fresh.parquet"),
        &[
            PqCol::I64("id", sel.iter().map(|&x| Some(x as i64)).collect()),
            PqCol::F64("ctr_1d", sel.iter().map(|_| Some(0.5)).collect()),
        ],
        20,
    );
    let out = ok(&["update-stats", &store, "--stats", &d.p("fresh.parquet")]);
    assert!(
        out.contains("refreshed [ctr_1d] for 50 items") && out.contains("wrote 2 file(s)"),
        "{out}"
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(snap.get_stat(d.ids[0], "ctr_1d").unwrap(), Some(0.5));
    assert_eq!(
        snap.get_stat(d.ids[60], "ctr_1d").unwrap(),
        d.ctr[60].map(|x| x as f32)
    );
    assert_eq!(
        snap.get_stat(d.ids[0], "impressions_7d").unwrap(),
        d.imp[0].map(|x| x as f32)
    );
    let dv = json(&ok(&["diff", &store, "3", "--json"]));
    assert_eq!(dv["files_added"].as_array().unwrap().len(), 2);
    assert_eq!(dv["ids_added"], 0);

    // add-items with profile and stats, upsert-items, delete-items.
    npy_u64(&d.path("new_ids.npy"), &[5, 6, 7]);
    let nv: Vec<f32> = [5u64, 6, 7]
        .iter()
        .flat_map(|&id| common::vector(id, 1))
        .collect();
    npy_f32(&d.path("new_v2.npy"), &nv, DIM);
    std::fs::write(
        d.path("new_items.csv"),
        "id,category,price\n5,3,1.5\n6,,2.5\n7,4,\n",
    )
    .unwrap();
    std::fs::write(d.path("new_stats.csv"), "id,ctr_1d\n7,0.25\n").unwrap();
    let out = ok(&[
        "add-items",
        &store,
        "--ids",
        &d.p("new_ids.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("new_v2.npy")),
        "--profile",
        &d.p("new_items.csv"),
        "--stats",
        &d.p("new_stats.csv"),
    ]);
    assert!(
        out.contains("added 3 items") && out.contains("303 items, 2 segment(s)"),
        "{out}"
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(snap.get_categorical(6, "category").unwrap(), None);
    assert_eq!(snap.get_numeric(5, "price").unwrap(), Some(1.5));
    assert_eq!(snap.get_stat(7, "ctr_1d").unwrap(), Some(0.25));
    assert_eq!(snap.get_stat(5, "ctr_1d").unwrap(), None);

    npy_u64(&d.path("upd.npy"), &[d.ids[1], 8]);
    let uv: Vec<f32> = vec![0.5; 2 * DIM];
    npy_f32(&d.path("upd_v2.npy"), &uv, DIM);
    let out = ok(&[
        "upsert-items",
        &store,
        "--ids",
        &d.p("upd.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("upd_v2.npy")),
    ]);
    assert!(
        out.contains("1 replaced older rows, 1 new") && out.contains("304 items"),
        "{out}"
    );
    // No tables given: every profile and statistics column is reset, and
    // the output says so.
    assert!(
        out.contains("replaced whole; category, price, ctr_1d, impressions_7d not in the inputs"),
        "{out}"
    );
    assert_eq!(
        Store::open(&store)
            .unwrap()
            .snapshot()
            .get_embedding(d.ids[1], "prerank@v2")
            .unwrap(),
        vec![0.5; DIM]
    );

    let out = tool()
        .args(["delete-items", &store, "--ids", "-"])
        .write_stdin(format!("{} 5\n", d.ids[2]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(snap.len(), 302);
    assert!(snap.lookup(d.ids[2]).is_none() && snap.lookup(5).is_none());
    let segs_before = snap.segments().len();
    assert!(segs_before >= 3);

    let out = ok(&["compact", &store, "--if-needed"]);
    assert!(out.contains("nothing to compact"), "{out}");
    let out = ok(&["compact", &store]);
    assert!(
        out.contains(&format!("compacted {segs_before} segment(s) into 1")),
        "{out}"
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!((snap.len(), snap.segments().len()), (302, 1));
    assert_eq!(snap.get_stat(7, "ctr_1d").unwrap(), Some(0.25));
    let last = snap.number();
    // One clean segment: nothing to compact whatever the limits, said as
    // such (not as a race with another writer), and `--json` still prints
    // one object, saying nothing was published.
    let out = ok(&["compact", &store, "--if-needed", "--max-segments", "0"]);
    assert!(
        out.contains(&format!(
            "nothing to compact: snapshot {last} has 1 segment(s), 0 of 302 row(s) deleted"
        )),
        "{out}"
    );
    let v = json(&ok(&["compact", &store, "--json"]));
    assert_eq!(v["published"], false);
    assert_eq!(v["snapshot"], last);
    assert_eq!(
        (v["items"].as_u64(), v["segments"].as_u64()),
        (Some(302), Some(1))
    );

    // diff of the whole history.
    let dv = json(&ok(&["diff", &store, "1", "--json"]));
    assert_eq!(dv["embeddings_added"], serde_json::json!(["prerank@v2"]));
    assert_eq!(dv["embeddings_removed"], serde_json::json!(["prerank@v1"]));
    // 5..=8 added, 5 deleted again; ids[2] deleted.
    assert_eq!(dv["ids_added"], 3);
    assert_eq!(dv["ids_removed"], 1);
    let t = ok(&["diff", &store, "1", &last.to_string()]);
    assert!(
        t.contains("embeddings: added [prerank@v2], removed [prerank@v1]"),
        "{t}"
    );

    // verify: clean, then a damaged file of a retained older snapshot.
    let out = ok(&["verify", &store]);
    assert!(out.contains("clean:"), "{out}");
    let v = json(&ok(&["verify", &store, "--json"]));
    assert_eq!(v["clean"], true);
    let older = Store::open(&store)
        .unwrap()
        .open_snapshot(last - 1)
        .unwrap();
    let current: std::collections::HashSet<String> = snap.files().into_iter().collect();
    let victim = older
        .files()
        .into_iter()
        .find(|f| !current.contains(f) && f.ends_with(".vcol"))
        .unwrap();
    drop(older);
    let st = Store::open(&store).unwrap();
    let users: Vec<u64> = st
        .snapshots()
        .unwrap()
        .into_iter()
        .filter(|&n| st.open_snapshot(n).unwrap().files().contains(&victim))
        .collect();
    drop(st);
    assert!(!users.is_empty() && !users.contains(&last));
    let p = d.path("s").join(&victim);
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();
    let out = tool().args(["verify", &store]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let so = String::from_utf8_lossy(&out.stdout);
    for n in 1..=last {
        let damaged = so.contains(&format!("snapshot {n}: DAMAGED"));
        assert_eq!(damaged, users.contains(&n), "snapshot {n}: {so}");
        assert_eq!(so.contains(&format!("snapshot {n}: ok")), !damaged, "{so}");
    }
    assert!(so.contains(&victim), "{so}");
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        se.contains(&format!("{} of {last} snapshot(s) damaged", users.len())),
        "{se}"
    );

    // gc keeps only the newest; then verify is clean again.
    let out = ok(&["gc", &store, "--keep-last", "1", "--grace-secs", "0"]);
    assert!(out.contains(&format!("kept snapshots [{last}]")), "{out}");
    assert!(out.contains(&victim), "{out}");
    let out = ok(&["verify", &store]);
    assert!(out.contains("clean: 1 snapshot(s)"), "{out}");
    assert_eq!(
        Store::open(&store).unwrap().snapshots().unwrap(),
        vec![last]
    );
}

#[test]
fn demo_runs_and_export_builds_and_queries() {
    let d = Data::new();
    let out = ok(&["demo", "--rows", "3000", "--queries", "10"]);
    for want in [
        "generated 3000 items",
        "snapshot 1: built",
        "snapshot 2: added a three-tower bundle",
        "snapshot 3: added an item tower for prerank@v1 and 2000 fresh items",
        "2000 vectors computed from their profiles",
        "snapshot 4: refreshed ctr_1d",
        "two-tower",
        "three-tower",
        "refused: version skew",
        "verified 4 snapshots",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let out = ok(&["demo", "--rows", "2000", "--export", &d.p("ex")]);
    assert!(out.contains("wrote 2000 items"), "{out}");
    let e = |n: &str| d.p(&format!("ex/{n}"));
    ok(&[
        "build",
        &d.p("st"),
        "--ids",
        &e("ids.npy"),
        "--embedding",
        &format!("prerank@v1:f16={}", e("emb_v1.npy")),
        "--profile",
        &e("items.parquet"),
        "--stats",
        &e("stats.csv"),
        "--model",
        &e("model"),
    ]);
    let v = json(&ok(&[
        "query",
        &d.p("st"),
        "--embedding",
        "prerank@v1",
        "--user",
        &e("user.json"),
        "--candidates",
        &e("candidates.txt"),
        "-k",
        "5",
        "--three-tower",
        "--inputs",
        &e("user_inputs.json"),
        "--json",
    ]));
    assert_eq!(v["hits"].as_array().unwrap().len(), 5);
    let snap = Store::open(d.path("st")).unwrap().snapshot();
    assert_eq!(snap.len(), 2000);
    // The exported item tower and fresh items: vectors computed on add.
    ok(&["add-model", &d.p("st"), &e("item_tower")]);
    let out = ok(&[
        "add-items",
        &d.p("st"),
        "--ids",
        &e("fresh_ids.npy"),
        "--profile",
        &e("fresh_items.parquet"),
    ]);
    assert!(out.contains("2000 vectors computed"), "{out}");
    let after = Store::open(d.path("st")).unwrap().snapshot();
    assert_eq!(after.computed_count("prerank@v1").unwrap(), 2000);
    let c = vstore_tool::synth::Catalogue::generate(2000, 42);
    for i in [0usize, 777, 1999] {
        assert_eq!(
            snap.get_categorical(c.ids[i], "category").unwrap(),
            Some(c.category[i])
        );
        assert_eq!(snap.get_categorical(c.ids[i], "brand").unwrap(), c.brand[i]);
        assert_eq!(snap.get_stat(c.ids[i], "ctr_1d").unwrap(), c.ctr_1d[i]);
    }
}

/// Every item's fused score under the store's `prerank@v1` bundle, by id.
fn scores_of(dir: &std::path::Path, user: &[f32], inputs: &vstore::UserInputs) -> Vec<(u64, f32)> {
    let snap = Store::open(dir).unwrap().snapshot();
    let q = vstore::Query::full_scan("prerank@v1", user, snap.len()).three_tower(inputs);
    let mut v: Vec<(u64, f32)> = snap
        .query(&q)
        .unwrap()
        .hits
        .iter()
        .map(|h| (h.id, h.score))
        .collect();
    v.sort_by_key(|x| x.0);
    v
}

#[test]
fn add_model_replace_and_drop_model() {
    let d = Data::new();
    // A store without a bundle; add one, precomputed.
    d.build_f32(
        "s",
        &[
            "--profile",
            &d.p("items.parquet"),
            "--stats",
            &d.p("stats.parquet"),
        ],
    );
    assert!(Store::open(d.path("s"))
        .unwrap()
        .snapshot()
        .model_keys()
        .is_empty());
    let out = ok(&["add-model", &d.p("s"), &d.p("model"), "--precompute", "f16"]);
    assert!(
        out.contains("added a bundle for prerank@v1 (first-layer item part precomputed as f16)"),
        "{out}"
    );
    assert!(
        out.contains("published snapshot 2") && out.contains("bundles [prerank@v1]"),
        "{out}"
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert!(snap.model_is_precomputed("prerank@v1"));
    // Replace it with the plain bundle: same scores up to f16 rounding of
    // the precomputed part, and no longer precomputed.
    let out = ok(&["add-model", &d.p("s"), &d.p("model"), "--replace"]);
    assert!(out.contains("replaced the bundle for prerank@v1"), "{out}");
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert!(!snap.model_is_precomputed("prerank@v1"));
    let e = usage_fails(&[
        "add-model",
        &d.p("s"),
        &d.p("model"),
        "--precompute",
        "bf16",
    ]);
    assert!(e.contains("--precompute") && e.contains("bf16"), "{e}");
    // At bf16: stored so, listed so, and scoring within bf16's error of
    // the f32 bundle.
    let user = vec![0.25f32; 64];
    let inputs = vstore::UserInputs::new()
        .dense("user_stats", vec![0.5; 8])
        .by_item("user_category_ctr", [(1, vec![0.25])]);
    let f32_scores = scores_of(&d.path("s"), &user, &inputs);
    let out = ok(&[
        "add-model",
        &d.p("s"),
        &d.p("model"),
        "--replace",
        "--precision",
        "bf16",
    ]);
    assert!(
        out.contains("replaced the bundle for prerank@v1, dense layers at bf16"),
        "{out}"
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert_eq!(
        snap.model("prerank@v1").unwrap().precision(),
        vstore::Precision::Bf16
    );
    let bf16_scores = scores_of(&d.path("s"), &user, &inputs);
    assert_eq!(f32_scores.len(), bf16_scores.len());
    assert_ne!(f32_scores, bf16_scores, "bf16 must not be f32");
    for ((ia, a), (ib, b)) in f32_scores.iter().zip(&bf16_scores) {
        assert_eq!(ia, ib);
        assert!(
            (a - b).abs() <= 0.05 * a.abs() + 1e-3,
            "item {ia}: f32 {a} vs bf16 {b}"
        );
    }
    let out = ok(&["inspect", &d.p("s")]);
    assert!(out.contains("bf16"), "{out}");
    let out = ok(&[
        "add-model",
        &d.p("s"),
        &d.p("model"),
        "--replace",
        "--precision",
        "int8",
    ]);
    assert!(out.contains("dense layers at int8"), "{out}");
    let int8_scores = scores_of(&d.path("s"), &user, &inputs);
    for ((ia, a), (ib, b)) in f32_scores.iter().zip(&int8_scores) {
        assert_eq!(ia, ib);
        assert!(
            (a - b).abs() <= 0.1 * a.abs() + 1e-2,
            "item {ia}: f32 {a} vs int8 {b}"
        );
    }
    // `query --exact --threads 2` on the int8 bundle: the f32 bundle's
    // top k, ids and scores (the one-thread result whatever the threads).
    std::fs::write(
        d.path("u.json"),
        serde_json::json!({ "vector": user }).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.path("in.json"),
        serde_json::json!({
            "dense": {"user_stats": vec![0.5f32; 8]},
            "by_item": {"user_category_ctr": {"1": [0.25]}},
        })
        .to_string(),
    )
    .unwrap();
    let mut top = f32_scores.clone();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let (sp, up, ip) = (d.p("s"), d.p("u.json"), d.p("in.json"));
    for extra in [&["--exact"][..], &["--exact", "--threads", "2"]] {
        let mut args = vec![
            "query",
            &sp,
            "--embedding",
            "prerank@v1",
            "--user",
            &up,
            "--all",
            "-k",
            "10",
            "--three-tower",
            "--inputs",
            &ip,
            "--json",
        ];
        args.extend(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        let got: Vec<(u64, f32)> = (v["hits"].as_array().unwrap().iter())
            .map(|h| {
                (
                    h["id"].as_u64().unwrap(),
                    h["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        assert_eq!(got, top[..10].to_vec(), "{extra:?}");
    }
    let e = usage_fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("u.json"),
        "--all",
        "--three-tower",
        "--threads",
        "0",
    ]);
    assert!(e.contains("--threads"), "{e}");
    let e = usage_fails(&["add-model", &d.p("s"), &d.p("model"), "--precision", "int4"]);
    assert!(e.contains("--precision") && e.contains("int4"), "{e}");
    let out = ok(&["drop-model", &d.p("s"), "prerank@v1"]);
    assert!(
        out.contains("dropped the bundle for prerank@v1") && out.contains("bundles []"),
        "{out}"
    );
    let e = fails(&["drop-model", &d.p("s"), "prerank@v1"]);
    assert!(e.contains("prerank@v1"), "{e}");
}

#[test]
fn damaged_newest_manifest_is_reported_refused_and_set_aside_by_choice() {
    // update-stats -> damage the newest manifest -> update-stats again used
    // to publish on top of the older snapshot, silently dropping the first
    // refresh.
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    let sel = &d.ids[..10];
    parquet_file(
        &d.path("fresh.parquet"),
        &[
            PqCol::I64("id", sel.iter().map(|&x| Some(x as i64)).collect()),
            PqCol::F64("ctr_1d", sel.iter().map(|_| Some(0.5)).collect()),
        ],
        20,
    );
    ok(&["update-stats", &store, "--stats", &d.p("fresh.parquet")]);
    let m2 = d.path("s").join("MANIFEST-00000000000000000002");
    let mut b = std::fs::read(&m2).unwrap();
    let n = b.len();
    b[n - 60] ^= 0x04;
    std::fs::write(&m2, &b).unwrap();
    let before = common::fingerprint(&d.path("s"));

    // A reader falls back and says so on standard error.
    let id = d.ids[0].to_string();
    let out = tool()
        .args(["inspect", &store, "--id", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: MANIFEST-00000000000000000002 is damaged"),
        "{err}"
    );

    // Every writer command refuses, naming the manifest and the recovery.
    let out = tool()
        .args(["update-stats", &store, "--stats", &d.p("fresh.parquet")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("error: ") && e.contains("MANIFEST-00000000000000000002 is damaged"),
        "{e}"
    );
    assert!(e.contains("recover"), "{e}");
    let e = fails(&["gc", &store]);
    assert!(e.contains("--set-aside-damaged"), "{e}");
    // Restoring the snapshot readers fell back to: the writer's refusal
    // (not "the newest already", as the reader's view would say).
    let out = tool()
        .args(["restore", &store, "--snapshot", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("error: ")
            && e.contains("MANIFEST-00000000000000000002 is damaged")
            && e.contains("recover")
            && !e.contains("newest already"),
        "{e}"
    );
    common::assert_unchanged(&d.path("s"), &before);

    // `recover` without its flag is a usage error and does nothing.
    let out = tool().args(["recover", &store]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    common::assert_unchanged(&d.path("s"), &before);

    // By choice: set it aside, then writers publish again.
    let out = ok(&["recover", &store, "--set-aside-damaged"]);
    assert!(
        out.contains("MANIFEST-00000000000000000002.damaged"),
        "{out}"
    );
    ok(&["update-stats", &store, "--stats", &d.p("fresh.parquet")]);
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(snap.parent(), Some(1));
    assert_eq!(snap.get_stat(d.ids[0], "ctr_1d").unwrap(), Some(0.5));
}

/// A data file of the newest snapshot missing or damaged: readers and
/// writers refuse (never a silent fallback), the error points at `recover`,
/// and `recover --set-aside-damaged` gives up the snapshots newer than the
/// newest intact one (it once handled damaged manifests only, and
/// `restore` could not open the writer either, so only a hand-made rename
/// got the store back).
#[test]
fn recover_sets_aside_snapshots_whose_data_files_are_lost() {
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    let dir = d.path("s");
    let out = tool()
        .args(["delete-items", &store, "--ids", "-"])
        .write_stdin(format!("{}\n", d.ids[0]))
        .output()
        .unwrap();
    assert!(out.status.success());
    let del: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("s0000000002-") && n.ends_with(".vdel"))
        .collect();
    assert_eq!(del.len(), 1, "{del:?}");
    std::fs::remove_file(dir.join(&del[0])).unwrap();
    for args in [
        &["inspect", &store][..],
        &["restore", &store, "--snapshot", "1"],
    ] {
        let e = fails(args);
        assert!(
            e.contains(&del[0]) && e.contains("recover") && e.contains("--set-aside-damaged"),
            "{args:?}: {e}"
        );
    }
    let out = ok(&["recover", &store, "--set-aside-damaged"]);
    assert!(
        out.contains("MANIFEST-00000000000000000002.damaged")
            && out.contains(&del[0])
            && out.contains("the newest snapshot is now 1"),
        "{out}"
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!((snap.number(), snap.len()), (1, d.ids.len()));
    // Writers publish again, after the given-up number.
    let out = tool()
        .args(["delete-items", &store, "--ids", "-"])
        .write_stdin(format!("{}\n", d.ids[0]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!((snap.number(), snap.len()), (3, d.ids.len() - 1));
    // Nothing damaged: nothing set aside, said so.
    let out = ok(&["recover", &store, "--set-aside-damaged"]);
    assert!(out.contains("nothing set aside"), "{out}");
    // A shared file damaged in every snapshot: refused, nothing renamed.
    let ids_file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("s0000000001-") && n.ends_with("-ids.vidx"))
        .unwrap();
    let mut bytes = std::fs::read(dir.join(&ids_file)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(dir.join(&ids_file), &bytes).unwrap();
    // (Without LOCK: a refused recover creates none.)
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    let before = common::fingerprint(&dir);
    let e = fails(&["recover", &store, "--set-aside-damaged"]);
    assert!(
        e.contains("no snapshot") && e.contains("intact") && e.contains("nothing set aside"),
        "{e}"
    );
    common::assert_unchanged(&dir, &before);
}

#[test]
fn gc_lists_what_it_skipped_and_collects_the_rest() {
    let d = Data::new();
    d.build("s");
    let dir = d.path("s");
    // A directory named like a data file, and real garbage beside it.
    std::fs::create_dir(dir.join("s0000000009-g3-profile.vcol")).unwrap();
    std::fs::write(dir.join("s0000000009-g4-ids.vidx"), b"stray").unwrap();
    let out = ok(&["gc", &d.p("s"), "--keep-last", "1", "--grace-secs", "0"]);
    assert!(
        out.contains("skipped s0000000009-g3-profile.vcol: a directory"),
        "{out}"
    );
    assert!(out.contains("removed s0000000009-g4-ids.vidx"), "{out}");
    assert!(dir.join("s0000000009-g3-profile.vcol").is_dir());
    assert!(!dir.join("s0000000009-g4-ids.vidx").exists());
}

#[test]
fn verify_and_inspect_snapshot_work_past_a_damaged_newest_snapshot() {
    use vstore::{Dtype, ItemBatch, Schema, Writer};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let mut w = Writer::create(&store, Schema::new().embedding("e", "v1", 4, Dtype::F32)).unwrap();
    for s in 0..3u64 {
        let ids: Vec<u64> = (s * 10..s * 10 + 10).collect();
        let v: Vec<f32> = ids
            .iter()
            .flat_map(|&i| [i as f32, 1.0, 2.0, 3.0])
            .collect();
        let mut tx = w.begin();
        tx.add_items(ItemBatch::new(ids).embedding("e@v1", v))
            .unwrap();
        tx.commit().unwrap();
    }
    drop(w);
    // Snapshot 3's own segment (g2) files are referenced by it alone.
    let victim = "s0000000003-g2-emb-e@v1.vcol";
    let p = store.join(victim);
    let clean = std::fs::read(&p).unwrap();
    let s = store.to_str().unwrap();
    // In the metadata (Store::open refuses the store), then in the data
    // region (only verification notices).
    for at in [clean.len() - 60, 64 + 3] {
        let mut bytes = clean.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&p, &bytes).unwrap();
        let out = tool().args(["verify", s]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "byte {at}");
        let so = String::from_utf8_lossy(&out.stdout);
        assert!(so.contains("snapshot 1: ok"), "{so}");
        assert!(so.contains("snapshot 2: ok"), "{so}");
        assert!(so.contains("snapshot 3: DAMAGED"), "{so}");
        assert!(so.contains(victim), "{so}");
        let v = json(
            &tool()
                .args(["verify", s, "--json"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap(),
        );
        assert_eq!(v["clean"], false);
        assert_eq!(v["snapshots"][1]["ok"], true);
        assert_eq!(v["snapshots"][2]["ok"], false);

        let v = json(&ok(&["inspect", s, "--snapshot", "2", "--json"]));
        assert_eq!(v["snapshot"], 2);
        assert_eq!(v["items"], 20);
        let text = ok(&["inspect", s, "--snapshot", "1"]);
        assert!(text.contains("snapshot 1 (*): 10 live items"), "{text}");
    }
    let e = fails(&["inspect", s, "--snapshot", "9"]);
    assert!(e.contains("snapshot 9 is not retained"), "{e}");
}

#[test]
fn named_v2_bundles_query_with_model_and_fusion_and_drop_by_name() {
    let d = Data::new();
    d.build("s");
    // The data's bundle as contract v2, named "ab", fusing by click alone.
    let mut j: Value =
        serde_json::from_slice(&std::fs::read(d.path("model/model.json")).unwrap()).unwrap();
    j["format"] = serde_json::json!("vstore.three_tower.v2");
    j["name"] = serde_json::json!("ab");
    j["fusion"] = serde_json::json!({"kind": "click_weighted", "base": "click", "weights": {}});
    std::fs::create_dir_all(d.path("model_ab")).unwrap();
    std::fs::write(d.path("model_ab/model.json"), j.to_string()).unwrap();
    std::fs::copy(
        d.path("model/weights.safetensors"),
        d.path("model_ab/weights.safetensors"),
    )
    .unwrap();
    let out = ok(&["add-model", &d.p("s"), &d.p("model_ab")]);
    assert!(
        out.contains("added a bundle for prerank@v1 named \"ab\""),
        "{out}"
    );
    assert!(
        out.contains("contract v2") && out.contains("click_weighted"),
        "{out}"
    );
    // The same name again needs --replace.
    let e = fails(&["add-model", &d.p("s"), &d.p("model_ab")]);
    assert!(e.contains("--replace") && e.contains("\"ab\""), "{e}");
    let v = json(&ok(&["inspect", &d.p("s"), "--json"]));
    let names: Vec<&str> = (v["bundles"].as_array().unwrap().iter())
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ab", "default"]);
    let text = ok(&["inspect", &d.p("s")]);
    assert!(text.contains("prerank@v1 ab: "), "{text}");

    let u = user();
    std::fs::write(
        d.path("user.json"),
        serde_json::json!({"vector": u}).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.path("inputs.json"),
        serde_json::json!({
            "dense": {"user_stats": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.05]},
            "by_item": {"user_category_ctr": {"1": [0.05]}},
        })
        .to_string(),
    )
    .unwrap();
    let query = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "query".to_string(),
            d.p("s"),
            "--embedding".into(),
            "prerank@v1".into(),
            "--user".into(),
            d.p("user.json"),
            "--all".into(),
            "-k".into(),
            "10".into(),
            "--three-tower".into(),
            "--inputs".into(),
            d.p("inputs.json"),
            "--heads".into(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |extra: &[&str]| -> Value {
        let a = query(extra);
        json(&ok(&a.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    // Two bundles: one must be named.
    let a = query(&[]);
    let e = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("[ab, default]"), "{e}");
    // "ab" fuses by click: each score is its click head.
    let v = run(&["--model", "ab"]);
    for h in v["hits"].as_array().unwrap() {
        assert_eq!(h["score"], h["heads"]["click"]);
    }
    // A fusion per query, inline and from a file, ranks by like alone.
    let f = r#"{"kind": "weighted_sum", "weights": {"like": 1.0}}"#;
    std::fs::write(d.path("fusion.json"), f).unwrap();
    for given in [f.to_string(), d.p("fusion.json")] {
        let v = run(&["--model", "default", "--fusion", &given]);
        let hits = v["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 10);
        for h in hits {
            assert_eq!(h["score"], h["heads"]["like"]);
        }
    }
    let a = query(&[
        "--model",
        "ab",
        "--fusion",
        r#"{"kind": "weighted_sum", "weights": {"liked": 1.0}}"#,
    ]);
    let e = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("fusion.weights.liked"), "{e}");
    let a = query(&["--model", "ab", "--fusion", r#"{"kind": "sum"}"#]);
    let e = usage_fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("fusion.kind"), "{e}");

    // drop-model needs the name when there are several.
    let e = fails(&["drop-model", &d.p("s"), "prerank@v1"]);
    assert!(e.contains("[ab, default]"), "{e}");
    let out = ok(&["drop-model", &d.p("s"), "prerank@v1", "--name", "ab"]);
    assert!(
        out.contains("dropped the bundle \"ab\" for prerank@v1"),
        "{out}"
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert_eq!(snap.model_names("prerank@v1"), ["default"]);
}

#[test]
fn restore_publishes_an_old_snapshot_as_the_newest() {
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    let out = tool()
        .args(["delete-items", &store, "--ids", "-"])
        .write_stdin(format!("{} {}\n", d.ids[0], d.ids[1]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Store::open(&store).unwrap().snapshot().len(), 298);
    let v = json(&ok(&["restore", &store, "--snapshot", "1", "--json"]));
    assert_eq!(v["restored_from"], 1);
    assert_eq!(v["items"], 300);
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(snap.number(), v["snapshot"].as_u64().unwrap());
    assert!(snap.number() > 2);
    assert!(snap.lookup(d.ids[0]).is_some() && snap.lookup(d.ids[1]).is_some());
    assert_eq!(snap.metadata("vstore.restored_from"), Some("1"));
    // A snapshot that does not exist: refused (exit 1), naming it.
    // Refusals (a snapshot that does not exist, the newest) leave the
    // store byte for byte as it was: not even LOCK appears.
    std::fs::remove_file(d.path("s").join("LOCK")).unwrap();
    let before = common::fingerprint(&d.path("s"));
    let e = fails(&["restore", &store, "--snapshot", "77"]);
    assert!(e.contains("snapshot 77 does not exist"), "{e}");
    let newest = snap.number().to_string();
    let e = fails(&["restore", &store, "--snapshot", &newest]);
    assert!(e.contains("is the newest already"), "{e}");
    common::assert_unchanged(&d.path("s"), &before);
}

/// `query --snapshot N` answers as snapshot N did (a deleted item is
/// there); a snapshot that is not retained is refused listing those that are.
#[test]
fn query_an_older_snapshot() {
    let d = Data::new();
    d.build("s");
    let store = d.p("s");
    let gone = d.ids[0];
    let out = tool()
        .args(["delete-items", &store, "--ids", "-"])
        .write_stdin(format!("{gone}\n"))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(
        d.path("u.json"),
        serde_json::json!({ "vector": user() }).to_string(),
    )
    .unwrap();
    std::fs::write(d.path("c.txt"), format!("{gone}\n{}\n", d.ids[1])).unwrap();
    let (u, c) = (d.p("u.json"), d.p("c.txt"));
    let args = |snapshot: Option<&'static str>| {
        let mut v: Vec<&str> = vec![
            "query",
            store.as_str(),
            "--embedding",
            "prerank@v1",
            "--user",
            u.as_str(),
            "--candidates",
            c.as_str(),
            "-k",
            "5",
            "--json",
        ];
        if let Some(n) = snapshot {
            v.extend(["--snapshot", n]);
        }
        v
    };
    let ids = |v: &Value| -> Vec<u64> {
        let mut ids: Vec<u64> = (v["hits"].as_array().unwrap().iter())
            .map(|h| h["id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut both = vec![gone, d.ids[1]];
    both.sort_unstable();
    assert_eq!(ids(&json(&ok(&args(Some("1"))))), both);
    assert_eq!(ids(&json(&ok(&args(None)))), vec![d.ids[1]]);
    let e = fails(&args(Some("9")));
    assert!(
        e.contains("snapshot 9 is not retained") && e.contains("[1, 2]"),
        "{e}"
    );
}

#[test]
fn version_completions_and_man_page_come_from_the_definitions() {
    let v = ok(&["--version"]);
    assert!(
        v.contains(&format!("writes version {}", vstore::FORMAT_VERSION))
            && v.contains(&format!(
                "reads versions {} to {}",
                vstore::OLDEST_FORMAT_VERSION,
                vstore::FORMAT_VERSION
            )),
        "{v}"
    );
    let bash = ok(&["completions", "bash"]);
    for sub in ["restore", "add-model", "query", "completions"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("--snapshot"), "restore's flag is completed");
    let zsh = ok(&["completions", "zsh"]);
    assert!(
        zsh.contains("#compdef vstore-tool"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    let man = ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("vstore\\-tool") && man.contains("restore"));
    // The pages the main page refers to (`vstore-tool-build(1)` ...): one
    // printed by name, or all written into a directory.
    let build = ok(&["man", "build"]);
    assert!(
        build.contains(".TH vstore-tool-build 1"),
        "{}",
        &build[..build.len().min(300)]
    );
    assert!(
        build.contains("\\-\\-embedding"),
        "build's page lists its flags"
    );
    let e = common::usage_fails(&["man", "nope"]);
    assert!(
        e.contains("no subcommand \"nope\"") && e.contains("add-model"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    ok(&["man", "--dir", common::s(dir.path())]);
    for page in [
        "vstore-tool.1",
        "vstore-tool-build.1",
        "vstore-tool-query.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    // An unknown shell is a usage error (exit 2) listing the choices.
    let e = common::usage_fails(&["completions", "tcsh"]);
    assert!(e.contains("bash") && e.contains("zsh"), "{e}");
}

/// Output that cannot be written (a full device) is an error naming the
/// output, exit 1, never a panic, for the generated scripts and pages too.
#[cfg(target_os = "linux")]
#[test]
fn generated_output_to_a_full_device_is_an_error_not_a_panic() {
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["man"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.contains("write <output>") && !e.contains("panicked"),
            "{args:?}: {e}"
        );
    }
}

/// A command that published and then could not write its report exits
/// with 3 and says the snapshot landed (it once exited 1 like a refusal,
/// and a retry applied the change twice or failed confusingly).
#[cfg(target_os = "linux")]
#[test]
fn a_publish_whose_report_cannot_be_written_says_it_landed() {
    let d = Data::new();
    d.build_f32("s", &[]);
    let store = d.p("s");
    for json in [false, true] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let before = vstore::Store::open(&store).unwrap().snapshot().number();
        let mut args = vec!["delete-items", &store, "--ids", "-"];
        if json {
            args.push("--json");
        }
        let id = d.ids[usize::from(json)].to_string();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{id}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        let now = vstore::Store::open(&store).unwrap().snapshot().number();
        assert_eq!(now, before + 1, "json {json}: {e}");
        assert_eq!(o.status.code(), Some(3), "json {json}: {e}");
        assert!(
            e.contains("write <output>")
                && e.contains(&format!("snapshot {now} was published"))
                && e.contains("would apply it twice"),
            "json {json}: {e}"
        );
    }
    // A refusal before publishing is still exit 1, with no such note.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
        .args(["restore", &store, "--snapshot", "999"])
        .stdout(full)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!e.contains("was published"), "{e}");
}

/// Standard error that cannot be written (a full device) is not a panic:
/// a refusal still exits 1, and a publishing command with `--json` still
/// prints its JSON and exits 0 (its report lines are notes then).
#[cfg(target_os = "linux")]
#[test]
fn a_standard_error_that_cannot_be_written_is_not_a_panic() {
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
        .args(["inspect", "/nonexistent/store"])
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let d = Data::new();
    d.build_f32("s", &[]);
    let store = d.p("s");
    let id = d.ids[0].to_string();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
        .args(["delete-items", &store, "--ids", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(full())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{id}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(v["snapshot"], 2, "{v}");
}

/// A damaged id index is an error naming its file from the commands that
/// look items up (never "not an item", or a wrong diff).
#[test]
fn a_damaged_id_index_is_named_by_the_commands_that_look_ids_up() {
    let d = Data::new();
    d.build_f32("s", &[]);
    let store = d.p("s");
    let dir = d.path("s");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with("ids.vidx"))
        .unwrap();
    let path = dir.join(&name);
    let mut b = std::fs::read(&path).unwrap();
    b[64 + 8 * 5] ^= 1; // the ids column: row 5's id changes
    std::fs::write(&path, b).unwrap();
    let id = d.ids[5].to_string();
    let e = fails(&["inspect", &store, "--id", &id]);
    assert!(e.contains(&name), "{e}");
    let ids = d.path("one.txt");
    std::fs::write(&ids, format!("{id}\n")).unwrap();
    let e = fails(&["delete-items", &store, "--ids", ids.to_str().unwrap()]);
    assert!(e.contains(&name), "{e}");
    let e = fails(&["diff", &store, "1"]);
    assert!(e.contains(&name), "{e}");
}

#[test]
fn publishing_commands_and_gc_print_json() {
    let d = Data::new();
    let v = json(&d.build_f32("s", &["--json"]));
    assert_eq!(v["published"], true);
    assert_eq!(v["snapshot"], 1);
    assert_eq!(v["parent"], Value::Null);
    assert_eq!(v["items"], ROWS);
    assert_eq!(v["embeddings"][0], "prerank@v1");
    assert!(v["bytes_written"].as_u64().unwrap() > 0);
    let store = d.p("s");
    let out = tool()
        .args(["delete-items", &store, "--ids", "-", "--json"])
        .write_stdin(format!("{}\n", d.ids[0]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["snapshot"], 2);
    assert_eq!(v["parent"], 1);
    assert_eq!(v["items"], ROWS - 1);
    assert!(v["files_shared"].as_u64().unwrap() > 0);
    let g = json(&ok(&[
        "gc",
        &store,
        "--keep-last",
        "1",
        "--grace-secs",
        "0",
        "--json",
    ]));
    assert_eq!(g["kept"], serde_json::json!([2]));
    assert_eq!(g["removed_snapshots"], serde_json::json!([1]));
    assert!(g["removed_staging"].as_array().unwrap().is_empty());
    assert_eq!(
        Store::open(&store).unwrap().snapshot().len() as u64,
        v["items"].as_u64().unwrap()
    );
}

#[test]
fn demo_prints_a_json_summary() {
    let d = Data::new();
    let store = d.p("demo.vstore");
    let v = json(&ok(&[
        "demo",
        "-q",
        "--rows",
        "3000",
        "--queries",
        "5",
        "--dir",
        &store,
        "--json",
    ]));
    let snap = Store::open(&store).unwrap().snapshot();
    assert_eq!(v["snapshot"], snap.number());
    assert_eq!(v["items"].as_u64().unwrap(), snap.len() as u64);
    assert_eq!(v["queries_per_kind"], 5);
    for kind in ["two_tower", "three_tower"] {
        let l = &v["latency_us"][kind];
        let (p50, max) = (l["p50"].as_f64().unwrap(), l["max"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{l}");
        // Where the time went, per stage (medians).
        let stage = |s: &str| l["stages"][s].as_f64().unwrap();
        assert!(stage("resolve") > 0.0 && stage("gather") > 0.0, "{l}");
        assert_eq!(stage("upper") > 0.0, kind == "three_tower", "{l}");
    }
    // The kernels the tool ran (a child process: the same CPU and
    // environment as this test's).
    assert_eq!(v["kernel_level"], vstore::kernel_level());
    assert_eq!(v["verified"], true);
}

#[test]
fn value_grammars_are_checked_by_the_parser_and_listed_in_help() {
    // Bad values are usage errors (exit 2) naming the option, before any
    // file is read.
    for (args, what) in [
        (
            vec![
                "build",
                "x",
                "--ids",
                "a.npy",
                "--embedding",
                "prerank=e.npy",
            ],
            "--embedding",
        ),
        (
            vec!["build", "x", "--ids", "a.npy", "--dtype", "f64"],
            "--dtype",
        ),
        (
            vec!["build", "x", "--ids", "a.npy", "--column", "c:colour"],
            "--column",
        ),
        (
            vec!["add-model", "x", "b", "--precision", "fp8"],
            "--precision",
        ),
        (
            vec!["add-model", "x", "b", "--precompute", "bf16"],
            "--precompute",
        ),
    ] {
        let e = common::usage_fails(&args);
        assert!(e.contains(what), "{args:?}: {e}");
    }
    let help = ok(&["add-model", "--help"]);
    assert!(
        help.contains("[possible values: f32, bf16, int8]"),
        "{help}"
    );
    let help = ok(&["build", "--help"]);
    assert!(
        help.contains("[possible values: f32, f16, bf16, i8]"),
        "{help}"
    );
    // Values differing only in case are taken, as before.
    let d = Data::new();
    d.build_f32("s", &[]);
    let e = fails(&["add-model", &d.p("s"), &d.p("nope"), "--precision", "BF16"]);
    assert!(!e.contains("possible values"), "{e}");
}
