//! Bad input: each gets a message naming the file and the row, column or
//! id, exit code 1, and leaves the store (or the directory a build was
//! pointed at) exactly as it was.

mod common;

use common::{
    assert_unchanged, fails, fingerprint, npy_f32, npy_i64, npy_u64, parquet_file, strs, Data,
    PqCol, DIM,
};

/// Runs a build that must fail; the target directory must not appear.
fn build_fails(d: &Data, extra: &[&str], ids: &str, emb: &str) -> String {
    let e = build_fails_at(d, "never", extra, ids, emb);
    assert!(
        !d.path("never").exists(),
        "a failed build left {}",
        d.p("never")
    );
    e
}

/// Runs a build into `store` that must fail; returns its error output.
fn build_fails_at(d: &Data, store: &str, extra: &[&str], ids: &str, emb: &str) -> String {
    fails(&strs(&d.build_args(store, ids, emb, extra)))
}

#[test]
fn malformed_npy() {
    let d = Data::new();
    std::fs::write(d.path("bad.npy"), b"this is not numpy at all").unwrap();
    let e = build_fails(&d, &[], "bad.npy", "emb.npy");
    assert!(
        e.contains("bad.npy") && e.contains("not a valid .npy"),
        "{e}"
    );
    let e = build_fails(&d, &[], "ids.npy", "bad.npy");
    assert!(
        e.contains("bad.npy") && e.contains("not a valid .npy"),
        "{e}"
    );
}

#[test]
fn truncated_npy() {
    let d = Data::new();
    let bytes = std::fs::read(d.path("emb.npy")).unwrap();
    std::fs::write(d.path("cut.npy"), &bytes[..bytes.len() - 100]).unwrap();
    let e = build_fails(&d, &[], "ids.npy", "cut.npy");
    assert!(e.contains("cut.npy") && e.contains("truncated"), "{e}");
    // Cut inside the header.
    std::fs::write(d.path("cut2.npy"), &bytes[..40]).unwrap();
    let e = build_fails(&d, &[], "ids.npy", "cut2.npy");
    assert!(
        e.contains("cut2.npy") && e.contains("truncated: the header needs"),
        "{e}"
    );
}

#[test]
fn wrong_dtypes() {
    let d = Data::new();
    // Float ids.
    npy_f32(&d.path("fids.npy"), &[1.0, 2.0], 1);
    let e = build_fails(&d, &[], "fids.npy", "emb.npy");
    assert!(e.contains("fids.npy") && e.contains("integer ids"), "{e}");
    // Integer embeddings.
    npy_u64(&d.path("iemb.npy"), &[1, 2, 3]);
    let e = build_fails(&d, &[], "ids.npy", "iemb.npy");
    assert!(e.contains("iemb.npy"), "{e}");
    // Negative int64 ids.
    npy_i64(&d.path("neg.npy"), &[5, -3, 7]);
    let e = build_fails(&d, &[], "neg.npy", "emb.npy");
    assert!(
        e.contains("neg.npy") && e.contains("row 1") && e.contains("negative"),
        "{e}"
    );
}

#[test]
fn ids_and_embeddings_of_different_lengths() {
    let d = Data::new();
    npy_u64(&d.path("few.npy"), &d.ids[..10]);
    let e = build_fails(&d, &[], "few.npy", "emb.npy");
    assert!(
        e.contains("emb.npy") && e.contains("300 rows") && e.contains("10 ids"),
        "{e}"
    );
}

#[test]
fn duplicate_ids_in_npy_and_in_tables() {
    let d = Data::new();
    let mut ids = d.ids.clone();
    ids[7] = ids[3];
    npy_u64(&d.path("dup.npy"), &ids);
    let e = build_fails(&d, &[], "dup.npy", "emb.npy");
    assert!(
        e.contains("dup.npy")
            && e.contains(&format!("duplicate id {}", ids[3]))
            && e.contains("rows 3 and 7"),
        "{e}"
    );
    let mut csv = std::fs::read_to_string(d.path("items.csv")).unwrap();
    csv += &format!("{},1,2.0\n", d.ids[5]);
    std::fs::write(d.path("dup.csv"), csv).unwrap();
    let e = build_fails(&d, &["--profile", &d.p("dup.csv")], "ids.npy", "emb.npy");
    assert!(
        e.contains("dup.csv")
            && e.contains(&format!("duplicate id {}", d.ids[5]))
            && e.contains("line 7")
            && e.contains("line 302"),
        "{e}"
    );
}

#[test]
fn nan_and_inf_in_embeddings() {
    let d = Data::new();
    let mut v = d.vectors.clone();
    v[5 * DIM + 3] = f32::NAN;
    npy_f32(&d.path("nan.npy"), &v, DIM);
    let e = build_fails(&d, &[], "ids.npy", "nan.npy");
    assert!(
        e.contains("nan.npy") && e.contains("row 5 column 3") && e.contains("NaN"),
        "{e}"
    );
    let mut v = d.vectors.clone();
    v[299 * DIM] = f32::INFINITY;
    npy_f32(&d.path("inf.npy"), &v, DIM);
    let e = build_fails(&d, &[], "ids.npy", "inf.npy");
    assert!(
        e.contains("inf.npy") && e.contains("row 299 column 0") && e.contains("inf"),
        "{e}"
    );
}

#[test]
fn missing_columns() {
    let d = Data::new();
    let e = build_fails(
        &d,
        &["--profile", &d.p("items.parquet"), "--id-column", "item_id"],
        "ids.npy",
        "emb.npy",
    );
    assert!(
        e.contains("items.parquet")
            && e.contains("no id column \"item_id\"")
            && e.contains("category"),
        "{e}"
    );
    let e = build_fails(
        &d,
        &["--profile", &d.p("items.parquet"), "--column", "colour=1"],
        "ids.npy",
        "emb.npy",
    );
    assert!(e.contains("colour") && e.contains("no such column"), "{e}");
    // update-stats with a column the store does not have.
    d.build("s");
    let before = fingerprint(&d.path("s"));
    std::fs::write(d.path("new.csv"), format!("id,ctr_7d\n{},0.5\n", d.ids[0])).unwrap();
    let e = fails(&["update-stats", &d.p("s"), "--stats", &d.p("new.csv")]);
    assert!(
        e.contains("new.csv") && e.contains("\"ctr_7d\"") && e.contains("ctr_1d, impressions_7d"),
        "{e}"
    );
    assert_unchanged(&d.path("s"), &before);
}

#[test]
fn mistyped_columns() {
    let d = Data::new();
    // A string in a CSV column.
    let mut csv = std::fs::read_to_string(d.path("items.csv")).unwrap();
    csv = csv.replacen(
        &format!("\n{},", d.ids[4]),
        &format!("\n{},shoes", d.ids[4]),
        1,
    );
    std::fs::write(d.path("str.csv"), csv).unwrap();
    let e = build_fails(&d, &["--profile", &d.p("str.csv")], "ids.npy", "emb.npy");
    assert!(
        e.contains("str.csv")
            && e.contains("line 6")
            && e.contains("\"category\"")
            && e.contains("not a number"),
        "{e}"
    );
    // A string column in Parquet.
    let id_col: Vec<Option<i64>> = d.ids.iter().map(|&x| Some(x as i64)).collect();
    parquet_file(
        &d.path("str.parquet"),
        &[
            PqCol::I64("id", id_col.clone()),
            PqCol::Str("brand", d.ids.iter().map(|_| Some("acme")).collect()),
        ],
        64,
    );
    let e = build_fails(
        &d,
        &["--profile", &d.p("str.parquet")],
        "ids.npy",
        "emb.npy",
    );
    assert!(
        e.contains("str.parquet") && e.contains("\"brand\"") && e.contains("strings"),
        "{e}"
    );
    // A fractional value in a column declared categorical.
    let e = build_fails(
        &d,
        &[
            "--profile",
            &d.p("items.parquet"),
            "--column",
            "price:categorical",
        ],
        "ids.npy",
        "emb.npy",
    );
    assert!(
        e.contains("items.parquet")
            && e.contains("row 1 column \"price\"")
            && e.contains("not a category code"),
        "{e}"
    );
    // Float ids in a table.
    parquet_file(
        &d.path("fid.parquet"),
        &[
            PqCol::F64("id", d.ids.iter().map(|&x| Some(x as f64)).collect()),
            PqCol::F64("x", d.ids.iter().map(|_| Some(1.0)).collect()),
        ],
        64,
    );
    let e = build_fails(&d, &["--stats", &d.p("fid.parquet")], "ids.npy", "emb.npy");
    assert!(
        e.contains("fid.parquet") && e.contains("holds floats"),
        "{e}"
    );
}

#[test]
fn table_rows_for_unknown_items() {
    let d = Data::new();
    let mut csv = std::fs::read_to_string(d.path("stats.csv")).unwrap();
    csv += "777,0.1,5\n";
    std::fs::write(d.path("extra.csv"), csv).unwrap();
    let e = build_fails(&d, &["--stats", &d.p("extra.csv")], "ids.npy", "emb.npy");
    assert!(
        e.contains("extra.csv")
            && e.contains("line 302")
            && e.contains("id 777")
            && e.contains("ids.npy"),
        "{e}"
    );
}

/// Writes `badmodel/`: the test bundle with a cross input on a column the
/// store does not have.
fn bad_model(d: &Data) {
    let json = std::fs::read_to_string(d.path("model/model.json")).unwrap();
    std::fs::create_dir_all(d.path("badmodel")).unwrap();
    std::fs::copy(
        d.path("model/weights.safetensors"),
        d.path("badmodel/weights.safetensors"),
    )
    .unwrap();
    std::fs::write(
        d.path("badmodel/model.json"),
        json.replace("\"column\": \"ctr_1d\"", "\"column\": \"ctr_2d\""),
    )
    .unwrap();
}

#[test]
fn bad_bundle_refused_by_build_and_add_model() {
    let d = Data::new();
    bad_model(&d);
    let e = build_fails(
        &d,
        &[
            "--stats",
            &d.p("stats.csv"),
            "--profile",
            &d.p("items.csv"),
            "--model",
            &d.p("badmodel"),
        ],
        "ids.npy",
        "emb.npy",
    );
    assert!(
        e.contains("badmodel") && e.contains("cross.inputs[0]") && e.contains("ctr_2d"),
        "{e}"
    );
    d.build("s");
    let before = fingerprint(&d.path("s"));
    let e = fails(&["add-model", &d.p("s"), &d.p("badmodel"), "--replace"]);
    assert!(e.contains("badmodel") && e.contains("ctr_2d"), "{e}");
    assert_unchanged(&d.path("s"), &before);
    // A directory without the bundle files.
    let e = fails(&["add-model", &d.p("s"), &d.p("s")]);
    assert!(e.contains("model.json"), "{e}");
    assert_unchanged(&d.path("s"), &before);
    // A bundle already present needs --replace.
    let e = fails(&["add-model", &d.p("s"), &d.p("model")]);
    assert!(e.contains("--replace"), "{e}");
    assert_unchanged(&d.path("s"), &before);
}

#[test]
fn a_path_that_is_not_a_store() {
    let d = Data::new();
    std::fs::create_dir_all(d.path("plain")).unwrap();
    std::fs::write(d.path("plain/notes.txt"), "hello").unwrap();
    let before = fingerprint(&d.path("plain"));
    for args in [
        vec!["add-model", &d.p("plain"), &d.p("model")],
        vec!["update-stats", &d.p("plain"), "--stats", &d.p("stats.csv")],
        vec!["inspect", &d.p("plain")],
        vec!["verify", &d.p("plain")],
        vec!["gc", &d.p("plain")],
        vec!["drop-embedding", &d.p("plain"), "prerank@v1"],
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        let e = fails(&args);
        assert!(
            e.contains("plain") && e.contains("not a vstore store"),
            "{args:?}: {e}"
        );
        assert_unchanged(&d.path("plain"), &before);
    }
    let e = fails(&["inspect", &d.p("nowhere")]);
    assert!(e.contains("nowhere"), "{e}");
    // build refuses a non-empty directory that is not a store.
    let e = fails(&strs(&d.build_args("plain", "ids.npy", "emb.npy", &[])));
    assert!(e.contains("not empty"), "{e}");
    assert_unchanged(&d.path("plain"), &before);
}

#[test]
fn a_store_locked_by_another_writer() {
    let d = Data::new();
    d.build("s");
    let w = vstore::Writer::open(d.path("s")).unwrap();
    let before = fingerprint(&d.path("s"));
    let e = fails(&["drop-model", &d.p("s"), "prerank@v1"]);
    assert!(e.contains("locked by another writer"), "{e}");
    let e = fails(&["update-stats", &d.p("s"), "--stats", &d.p("stats.csv")]);
    assert!(e.contains("locked by another writer"), "{e}");
    assert_unchanged(&d.path("s"), &before);
    drop(w);
    common::ok(&["drop-model", &d.p("s"), "prerank@v1"]);
}

#[test]
fn refused_updates_leave_the_store_as_it_was() {
    let d = Data::new();
    d.build("s");
    let before = fingerprint(&d.path("s"));
    // add-items with an id the store holds.
    npy_u64(&d.path("one.npy"), &d.ids[..1]);
    npy_f32(&d.path("one_emb.npy"), &d.vectors[..DIM], DIM);
    let e = fails(&[
        "add-items",
        &d.p("s"),
        "--ids",
        &d.p("one.npy"),
        "--embedding",
        &format!("prerank@v1={}", d.p("one_emb.npy")),
    ]);
    assert!(
        e.contains("one.npy")
            && e.contains(&format!("id {}", d.ids[0]))
            && e.contains("upsert-items"),
        "{e}"
    );
    // add-items without vectors for the store's version.
    let e = fails(&["add-items", &d.p("s"), "--ids", &d.p("one.npy")]);
    assert!(e.contains("prerank@v1"), "{e}");
    // vectors of the wrong dimension.
    npy_u64(&d.path("new.npy"), &[5]);
    npy_f32(&d.path("short.npy"), &[0.5; 8], 8);
    let e = fails(&[
        "add-items",
        &d.p("s"),
        "--ids",
        &d.p("new.npy"),
        "--embedding",
        &format!("prerank@v1={}", d.p("short.npy")),
    ]);
    assert!(e.contains("short.npy") && e.contains("dimension 8"), "{e}");
    // delete-items of an unknown id (text list).
    std::fs::write(d.path("del.txt"), format!("{}\n424242\n", d.ids[2])).unwrap();
    let e = fails(&["delete-items", &d.p("s"), "--ids", &d.p("del.txt")]);
    assert!(e.contains("del.txt") && e.contains("424242"), "{e}");
    std::fs::write(d.path("del2.txt"), "12 x13\n").unwrap();
    let e = fails(&["delete-items", &d.p("s"), "--ids", &d.p("del2.txt")]);
    assert!(
        e.contains("del2.txt") && e.contains("line 1") && e.contains("x13"),
        "{e}"
    );
    // add-embedding missing items, and with a bundle for another version: the
    // vectors are written before the bundle is refused, and removed again.
    npy_u64(&d.path("half.npy"), &d.ids[..150]);
    npy_f32(&d.path("half_emb.npy"), &d.vectors[..150 * DIM], DIM);
    let e = fails(&[
        "add-embedding",
        &d.p("s"),
        "--ids",
        &d.p("half.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("half_emb.npy")),
    ]);
    assert!(
        e.contains("half.npy") && e.contains("150 ids") && e.contains("300 live items"),
        "{e}"
    );
    let e = fails(&[
        "add-embedding",
        &d.p("s"),
        "--ids",
        &d.p("ids.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("emb.npy")),
        "--model",
        &d.p("model"),
    ]);
    assert!(e.contains("prerank@v1") && e.contains("prerank@v2"), "{e}");
    // update-stats for an unknown item.
    std::fs::write(
        d.path("r.csv"),
        format!("id,ctr_1d\n{},0.5\n99,0.1\n", d.ids[0]),
    )
    .unwrap();
    let e = fails(&["update-stats", &d.p("s"), "--stats", &d.p("r.csv")]);
    assert!(
        e.contains("r.csv") && e.contains("line 3") && e.contains("id 99"),
        "{e}"
    );
    // Dropping a version the store does not hold.
    let e = fails(&["drop-embedding", &d.p("s"), "prerank@v9"]);
    assert!(e.contains("prerank@v9") && e.contains("prerank@v1"), "{e}");
    assert_unchanged(&d.path("s"), &before);
}

/// The documented exit codes: 0 success, 1 refused or failed, 2 a
/// malformed command line (clap's own errors and the tool's checks of
/// option values alike).
#[test]
fn exit_codes_0_success_1_refused_2_malformed_command_line() {
    let d = Data::new();
    d.build("s");
    let code = |args: &[&str]| common::tool().args(args).output().unwrap().status.code();
    // 2: what clap refuses.
    assert_eq!(code(&["build"]), Some(2));
    assert_eq!(code(&["frobnicate"]), Some(2));
    assert_eq!(code(&["gc", &d.p("s"), "--keep-last", "x"]), Some(2));
    // 2: option values the tool refuses from the command line alone.
    let before = fingerprint(&d.path("s"));
    for args in [
        vec!["gc", &d.p("s"), "--keep-last", "0"],
        vec!["compact", &d.p("s"), "--max-dead", "2"],
        vec!["add-model", &d.p("s"), &d.p("model"), "--precompute", "i8"],
        vec![
            "build",
            &d.p("new"),
            "--ids",
            &d.p("ids.npy"),
            "--embedding",
            "nokey",
        ],
        vec![
            "query",
            &d.p("s"),
            "--embedding",
            "prerank@v1",
            "--user",
            "u.npy",
        ],
    ] {
        let e = common::usage_fails(&args);
        assert!(e.starts_with("error: "), "{args:?}: {e}");
    }
    assert_unchanged(&d.path("s"), &before);
    assert!(!d.path("new").exists());
    // 1: refused by the store or the inputs, or failed.
    fails(&["gc", &d.p("nowhere")]);
    fails(&["drop-embedding", &d.p("s"), "prerank@v9"]);
    fails(&["add-model", &d.p("s"), &d.p("model")]);
    // 0: success, and help.
    assert_eq!(code(&["verify", &d.p("s")]), Some(0));
    assert_eq!(code(&["--help"]), Some(0));
}

/// `--where` lists with no codes, or an empty item, are refused naming the
/// column (they used to filter out everything, or drop the empty item).
#[test]
fn where_lists_with_empty_items_are_refused_naming_the_column() {
    let d = Data::new();
    d.build("s");
    let base = [
        "query".to_string(),
        d.p("s"),
        "--embedding".into(),
        "prerank@v1".into(),
        "--user".into(),
        d.p("u.json"),
        "--all".into(),
    ];
    std::fs::write(d.path("u.json"), format!("{:?}", common::vector(1, 0))).unwrap();
    let run = |w: &str, good: bool| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend(["--where", w]);
        if good {
            common::ok(&args)
        } else {
            common::usage_fails(&args)
        }
    };
    for w in [
        "category in ,",
        "category in , ,",
        "category not in ,",
        "category in 1,,2",
        "category in 1,",
        "category in ,3",
        "category in",
        "category not in",
    ] {
        let e = run(w, false);
        assert!(
            e.contains("\"category\"") && e.contains("empty") && e.contains(w),
            "{w}: {e}"
        );
    }
    let e = run("category in 1,x", false);
    assert!(e.contains("\"category\"") && e.contains("\"x\""), "{e}");
    // Spaces around commas are fine.
    let out = run("category in 1, 2", true);
    assert!(out.contains("two-tower query"), "{out}");
}

/// A table with a column name twice (two `id`s, or two `price`s) is
/// refused naming the file and the column, Parquet and CSV alike.
#[test]
fn duplicate_column_names_are_refused() {
    let d = Data::new();
    let id_col: Vec<Option<i64>> = d.ids.iter().map(|&x| Some(x as i64)).collect();
    let other: Vec<Option<i64>> = d.ids.iter().map(|&x| Some(x as i64 + 1)).collect();
    parquet_file(
        &d.path("two_ids.parquet"),
        &[
            PqCol::I64("id", id_col.clone()),
            PqCol::I64("id", other),
            PqCol::F64("price", d.price.clone()),
        ],
        128,
    );
    parquet_file(
        &d.path("two_prices.parquet"),
        &[
            PqCol::I64("id", id_col),
            PqCol::F64("price", d.price.clone()),
            PqCol::F64("price", d.price.clone()),
        ],
        128,
    );
    let csv = std::fs::read_to_string(d.path("items.csv"))
        .unwrap()
        .lines()
        .map(|l| format!("{l},{}\n", l.split(',').nth(1).unwrap()))
        .collect::<String>();
    std::fs::write(d.path("two_cats.csv"), csv).unwrap();
    for (file, col) in [
        ("two_ids.parquet", "id"),
        ("two_prices.parquet", "price"),
        ("two_cats.csv", "category"),
    ] {
        let e = build_fails(&d, &["--profile", &d.p(file)], "ids.npy", "emb.npy");
        assert!(
            e.contains(file) && e.contains(&format!("column \"{col}\" appears more than once")),
            "{file}: {e}"
        );
    }
    d.build("s");
    let before = fingerprint(&d.path("s"));
    let e = fails(&[
        "update-stats",
        &d.p("s"),
        "--stats",
        &d.p("two_prices.parquet"),
    ]);
    assert!(
        e.contains("two_prices.parquet") && e.contains("\"price\""),
        "{e}"
    );
    assert_unchanged(&d.path("s"), &before);
}

#[test]
fn csv_messages_count_blank_lines_and_quoted_line_breaks() {
    let d = Data::new();
    let csv = format!(
        "id,ctr_1d,note\n{},0.1,\"two\nlines\"\n\n{},oops,x\n",
        d.ids[0], d.ids[1]
    );
    std::fs::write(d.path("odd.csv"), csv).unwrap();
    let e = build_fails(
        &d,
        &["--stats", &d.p("odd.csv"), "--skip-column", "note"],
        "ids.npy",
        "emb.npy",
    );
    // The header is line 1, the first record spans lines 2-3, line 4 is
    // blank: the bad value is on line 5.
    assert!(e.contains("line 5") && e.contains("\"oops\""), "{e}");
}

#[test]
fn empty_inputs_publish_nothing() {
    let d = Data::new();
    d.build("s");
    let before = fingerprint(&d.path("s"));
    std::fs::write(d.path("none.txt"), "# nothing\n").unwrap();
    let e = fails(&["delete-items", &d.p("s"), "--ids", &d.p("none.txt")]);
    assert!(
        e.contains("none.txt") && e.contains("nothing to delete"),
        "{e}"
    );
    std::fs::write(d.path("none.csv"), "id,ctr_1d\n").unwrap();
    let e = fails(&["update-stats", &d.p("s"), "--stats", &d.p("none.csv")]);
    assert!(e.contains("none.csv") && e.contains("no rows"), "{e}");
    npy_u64(&d.path("zero.npy"), &[]);
    npy_f32(&d.path("zero_emb.npy"), &[], DIM);
    let e = fails(&[
        "add-items",
        &d.p("s"),
        "--ids",
        &d.p("zero.npy"),
        "--embedding",
        &format!("prerank@v1={}", d.p("zero_emb.npy")),
    ]);
    assert!(
        e.contains("zero.npy") && e.contains("nothing to add"),
        "{e}"
    );
    assert_unchanged(&d.path("s"), &before);
}

#[test]
fn out_of_range_options_are_usage_errors() {
    for args in [
        vec![
            "query",
            "s",
            "--embedding",
            "a@b",
            "--user",
            "u.npy",
            "--all",
            "--repeat",
            "0",
        ],
        vec![
            "query",
            "s",
            "--embedding",
            "a@b",
            "--user",
            "u.npy",
            "--all",
            "--repeat",
            "1152921504606846976",
        ],
        vec![
            "query",
            "s",
            "--embedding",
            "a@b",
            "--user",
            "u.npy",
            "--all",
            "-k",
            "0",
        ],
        vec!["demo", "--rows", "0"],
        vec!["demo", "--rows", "288230376151711744"],
        vec!["demo", "--queries", "0"],
    ] {
        let out = common::tool().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// A writer that fails like a closed pipe.
struct ClosedPipe;

impl std::io::Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn verify_reports_damage_even_when_its_output_is_closed() {
    use clap::Parser;
    let d = Data::new();
    d.build("s");
    let victim = std::fs::read_dir(d.path("s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-emb-"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let cli = vstore_tool::Cli::parse_from(["vstore-tool", "verify", &d.p("s")]);
    let e = vstore_tool::run(cli, &mut ClosedPipe).unwrap_err();
    assert!(
        matches!(
            e,
            vstore_tool::ToolError::VerifyFailed {
                failed: 1,
                checked: 1
            }
        ),
        "{e}"
    );
}

/// Parquet logical types: decimals stored as integers (Spark's default) are
/// read as their values, not their unscaled integers; dates, times and
/// timestamps are refused rather than stored as raw day or millisecond
/// counts. (The column "name" carries the type annotation into the
/// helper's schema string.)
#[test]
fn parquet_decimals_are_scaled_and_dates_and_timestamps_refused() {
    let d = Data::new();
    let id_col: Vec<Option<i64>> = d.ids.iter().map(|&x| Some(x as i64)).collect();
    let n = d.ids.len();
    parquet_file(
        &d.path("dec.parquet"),
        &[
            PqCol::I64("id", id_col.clone()),
            PqCol::I32(
                "price (DECIMAL(9,2))",
                (0..n).map(|i| Some(1234 + i as i32)).collect(),
            ),
            PqCol::I64("fee (DECIMAL(18,3))", (0..n).map(|_| Some(-5)).collect()),
        ],
        64,
    );
    let store = d.p("s");
    d.build_f32("s", &["--stats", &d.p("dec.parquet")]);
    let text = common::ok(&["inspect", &store, "--id", &d.ids[3].to_string(), "--json"]);
    let item: serde_json::Value = serde_json::from_str(&text).unwrap();
    let value = |name: &str| {
        item["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no column {name}: {text}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert!((value("price") - 12.37).abs() < 1e-5, "{text}");
    assert!((value("fee") + 0.005).abs() < 1e-8, "{text}");

    for (col, what) in [
        ("day (DATE)", "dates"),
        ("at (TIMESTAMP(MILLIS,true))", "timestamps"),
        ("t (TIME(MILLIS,true))", "times of day"),
    ] {
        let vals: Vec<Option<i32>> = (0..n).map(|_| Some(19724)).collect();
        let c = if col.starts_with("at") {
            PqCol::I64(col, vals.iter().map(|v| v.map(i64::from)).collect())
        } else {
            PqCol::I32(col, vals)
        };
        parquet_file(
            &d.path("t.parquet"),
            &[PqCol::I64("id", id_col.clone()), c],
            64,
        );
        let e = build_fails(&d, &["--stats", &d.p("t.parquet")], "ids.npy", "emb.npy");
        let name = col.split(' ').next().unwrap();
        assert!(
            e.contains("t.parquet") && e.contains(&format!("{name:?}")) && e.contains(what),
            "{col}: {e}"
        );
    }
}

/// The demo with fewer items than it shows (it once sliced ten ids), and
/// never over a user's files: `--export` refuses a directory holding any
/// file it would write, `--dir` one that is not empty (as `build` does).
#[test]
fn demo_small_catalogues_and_existing_files() {
    let d = Data::new();
    for rows in ["1", "9"] {
        let out = common::ok(&["demo", "-q", "--rows", rows, "--queries", "1"]);
        assert!(out.contains("refused: version skew"), "{out}");
    }
    std::fs::create_dir_all(d.path("ex")).unwrap();
    std::fs::write(d.path("ex/stats.csv"), b"mine").unwrap();
    let e = fails(&["demo", "--rows", "100", "--export", &d.p("ex")]);
    assert!(
        e.contains("stats.csv") && e.contains("only new files"),
        "{e}"
    );
    assert_eq!(std::fs::read(d.path("ex/stats.csv")).unwrap(), b"mine");
    assert!(!d.path("ex/ids.npy").exists());
    let e = fails(&["demo", "--rows", "100", "--dir", &d.p("ex")]);
    assert!(
        e.contains("not empty and not a store") && e.contains("demo --dir"),
        "{e}"
    );
    assert_eq!(std::fs::read(d.path("ex/stats.csv")).unwrap(), b"mine");
    // Not into a store either.
    d.build_f32("s", &[]);
    let before = fingerprint(&d.path("s"));
    let e = fails(&["demo", "--rows", "100", "--export", &d.p("s")]);
    assert!(e.contains("holds a store"), "{e}");
    assert_unchanged(&d.path("s"), &before);
}

/// A build killed (or stopped by a full disk) before its first publish
/// leaves the lock, data files and a `.tmp` manifest: the next build takes
/// them back under the lock and says so. A live writer holding the lock,
/// a foreign file or a manifest still refuse, changing nothing.
#[test]
fn a_build_takes_back_what_an_interrupted_build_left() {
    let d = Data::new();
    let leftovers = [
        "LOCK",
        "s0000000001-g0-ids.vidx",
        "s0000000001-g0-emb-prerank@v1.vcol",
        "s0000000002-g0-profile.vcol.tmp",
        "MANIFEST-00000000000000000001.tmp",
    ];
    let leave = |dir: &str| {
        std::fs::create_dir_all(d.path(dir)).unwrap();
        for n in leftovers {
            let bytes: &[u8] = if n == "LOCK" { b"" } else { b"partial" };
            std::fs::write(d.path(dir).join(n), bytes).unwrap();
        }
    };
    leave("s");
    // A live writer holds the lock: refused, nothing removed.
    let w = vstore::Writer::create(d.path("s"), vstore::Schema::new().stat("x", 0.0)).unwrap();
    let before = fingerprint(&d.path("s"));
    let e = build_fails_at(&d, "s", &[], "ids.npy", "emb.npy");
    assert!(e.contains("locked by another writer"), "{e}");
    assert_unchanged(&d.path("s"), &before);
    drop(w);
    let out = d.build("s");
    assert!(
        out.contains("took back") && out.contains("interrupted build"),
        "{out}"
    );
    for n in &leftovers[1..] {
        assert!(out.contains(n), "{n} not reported: {out}");
    }
    // The new build's files may reuse the numbers; none is a leftover.
    for (n, bytes) in fingerprint(&d.path("s")) {
        assert!(
            bytes != b"partial" && !n.ends_with(".tmp"),
            "{n} left behind"
        );
    }
    assert!(out.contains("published snapshot 1"), "{out}");
    let store = vstore::Store::open(d.path("s")).unwrap();
    let snap = store.snapshot();
    assert_eq!((snap.number(), snap.len()), (1, d.ids.len()));
    snap.verify().unwrap();
    let v = snap.get_embedding(d.ids[7], "prerank@v1").unwrap();
    assert_eq!(v.len(), DIM);
    assert!(common::ok(&["verify", &d.p("s")]).contains("clean"));

    // Any other file: the plain refusal, naming it, the directory unchanged.
    leave("f");
    std::fs::write(d.path("f/notes.txt"), b"mine").unwrap();
    let before = fingerprint(&d.path("f"));
    let e = build_fails_at(&d, "f", &[], "ids.npy", "emb.npy");
    assert!(
        e.contains("not empty and not a store") && e.contains("notes.txt"),
        "{e}"
    );
    assert_unchanged(&d.path("f"), &before);
    // A distributed job planned on the new directory and never committed:
    // refused, naming the job and how to drop it.
    leave("j");
    std::fs::create_dir_all(d.path("j/_staging/nightly-7")).unwrap();
    std::fs::write(d.path("j/_staging/nightly-7/PLAN.json"), b"{}").unwrap();
    let before = fingerprint(&d.path("j"));
    let e = build_fails_at(&d, "j", &[], "ids.npy", "emb.npy");
    assert!(
        e.contains("_staging holds distributed build job(s) [nightly-7]")
            && e.contains("vstore.distributed.abort"),
        "{e}"
    );
    assert_unchanged(&d.path("j"), &before);
    // A manifest (here a damaged one) is not a leftover either.
    leave("m");
    std::fs::write(d.path("m/MANIFEST-00000000000000000001"), b"torn").unwrap();
    let before = fingerprint(&d.path("m"));
    let e = build_fails_at(&d, "m", &[], "ids.npy", "emb.npy");
    assert!(e.contains("MANIFEST-00000000000000000001"), "{e}");
    assert_unchanged(&d.path("m"), &before);
}

/// A store without a lock file (copied, or shipped read-only): every
/// refusal a writer subcommand can detect is found on a pinned snapshot
/// before the writer opens, so no `LOCK` appears and every byte stays.
#[test]
fn refusals_on_a_store_without_lock_create_nothing() {
    let d = Data::new();
    d.build("s");
    std::fs::remove_file(d.path("s/LOCK")).unwrap();
    bad_model(&d);
    npy_u64(&d.path("one.npy"), &d.ids[..1]);
    npy_f32(&d.path("one_emb.npy"), &d.vectors[..DIM], DIM);
    std::fs::write(d.path("del.txt"), "424242\n").unwrap();
    std::fs::write(d.path("r.csv"), "id,ctr_1d\n99,0.1\n").unwrap();
    let before = fingerprint(&d.path("s"));
    let (st, badm, modl) = (d.p("s"), d.p("badmodel"), d.p("model"));
    let (ids, one_ids, del, rcsv) = (d.p("ids.npy"), d.p("one.npy"), d.p("del.txt"), d.p("r.csv"));
    let emb1 = format!("prerank@v1={}", d.p("emb.npy"));
    let one = format!("prerank@v1={}", d.p("one_emb.npy"));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["add-model", &st, &badm, "--replace"],
            &["badmodel", "ctr_2d"],
        ),
        (vec!["add-model", &st, &modl], &["prerank@v1", "--replace"]),
        (
            vec!["drop-model", &st, "prerank@v9"],
            &["no model bundle for prerank@v9", "prerank@v1"],
        ),
        (
            vec!["drop-embedding", &st, "prerank@v9"],
            &["version skew", "prerank@v9", "prerank@v1"],
        ),
        (
            vec!["add-embedding", &st, "--ids", &ids, "--embedding", &emb1],
            &["already holds embedding prerank@v1"],
        ),
        (
            vec!["add-items", &st, "--ids", &one_ids, "--embedding", &one],
            &["one.npy", "upsert-items"],
        ),
        (
            vec!["delete-items", &st, "--ids", &del],
            &["del.txt", "424242"],
        ),
        (
            vec!["update-stats", &st, "--stats", &rcsv],
            &["r.csv", "id 99"],
        ),
    ];
    for (args, words) in cases {
        let e = fails(&args);
        for w in words {
            assert!(e.contains(w), "{args:?}: {w:?} not in {e}");
        }
        assert_unchanged(&d.path("s"), &before);
    }
    // Nothing to compact is decided before the writer opens, too.
    for extra in [&[][..], &["--if-needed"][..]] {
        let mut args = vec!["compact", st.as_str()];
        args.extend_from_slice(extra);
        let out = common::ok(&args);
        assert!(out.contains("nothing to compact"), "{out}");
        assert_unchanged(&d.path("s"), &before);
    }
}

#[test]
fn a_parquet_file_that_panics_the_decoder_is_refused() {
    // Found by fuzz/fuzz_targets/parquet.rs: parquet-rs panics on it.
    let d = Data::new();
    let bad = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz/parquet-vlq-overflow.parquet");
    let e = build_fails(
        &d,
        &["--profile", bad.to_str().unwrap()],
        "ids.npy",
        "emb.npy",
    );
    assert!(
        e.contains("parquet-vlq-overflow.parquet")
            && e.contains("not a readable Parquet file")
            && !e.contains("panicked"),
        "{e}"
    );
}

/// Devices and pipes in an input file's place: one that never ends
/// (`/dev/zero`, `/dev/urandom`) is refused from its first bytes, naming
/// the file, and a `.npy` stream is read no further than its header says
/// (trailing bytes are reported, not read without end).
#[cfg(unix)]
#[test]
fn endless_devices_and_streams_are_refused_from_their_first_bytes() {
    use std::os::unix::fs::symlink;
    let d = Data::new();
    symlink("/dev/zero", d.path("zero.npy")).unwrap();
    symlink("/dev/urandom", d.path("random.npy")).unwrap();
    symlink("/dev/zero", d.path("zero.csv")).unwrap();
    symlink("/dev/zero", d.path("zero.txt")).unwrap();
    symlink("/dev/zero", d.path("zero.json")).unwrap();
    for (ids, emb) in [
        ("zero.npy", "emb.npy"),
        ("random.npy", "emb.npy"),
        ("ids.npy", "zero.npy"),
    ] {
        let e = build_fails(&d, &[], ids, emb);
        assert!(
            e.contains("not a valid .npy file (no \\x93NUMPY magic)"),
            "{e}"
        );
    }
    let e = build_fails(&d, &["--profile", &d.p("zero.csv")], "ids.npy", "emb.npy");
    assert!(
        e.contains("zero.csv: not a text file (a NUL byte at byte 0)"),
        "{e}"
    );
    d.build_f32("s", &[]);
    let query = |user: &str, candidates: &str| {
        fails(&[
            "query",
            &d.p("s"),
            "--embedding",
            "prerank@v1",
            "--user",
            &d.p(user),
            "--candidates",
            &d.p(candidates),
        ])
    };
    let e = query("zero.json", "ids.npy");
    assert!(e.contains("zero.json: not a text file"), "{e}");
    std::fs::write(d.path("user.json"), format!("{:?}", vec![0.5f32; DIM])).unwrap();
    let e = query("user.json", "zero.txt");
    assert!(e.contains("zero.txt: not a text file"), "{e}");
    // Bundles: model.json as text, the weights a regular file.
    for (name, other) in [
        ("model.json", "weights.safetensors"),
        ("weights.safetensors", "model.json"),
    ] {
        let b = d.path(&format!("bundle-{name}"));
        std::fs::create_dir(&b).unwrap();
        std::fs::copy(d.path("model").join(other), b.join(other)).unwrap();
        symlink("/dev/zero", b.join(name)).unwrap();
        let e = fails(&["add-model", &d.p("s"), common::s(&b)]);
        assert!(
            e.contains(name) && (e.contains("not a text file") || e.contains("not a regular file")),
            "{e}"
        );
    }
    // A valid .npy stream followed by 50 MB of zeros: the header's shape
    // bounds the read (the message counts at most 64 KiB past the data).
    let mut feed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {} && head -c 50000000 /dev/zero",
            d.p("ids.npy")
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vstore-tool"))
        .args(strs(&d.build_args("s2", "/dev/stdin", "emb.npy", &[])))
        .stdin(feed.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = feed.kill();
    let _ = feed.wait();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    let n: u64 = e
        .split(" bytes after the data")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no trailing-byte count in {e}"));
    assert!((1..=65536).contains(&n), "{e}");
}

/// An empty candidate list names its file and the tool's way to score
/// every item (`--all`), not the library's.
#[test]
fn an_empty_candidate_list_points_to_all() {
    let d = Data::new();
    d.build_f32("s", &[]);
    std::fs::write(d.path("none.txt"), "# no ids today\n").unwrap();
    std::fs::write(d.path("user.json"), format!("{:?}", vec![0.5f32; DIM])).unwrap();
    let e = fails(&[
        "query",
        &d.p("s"),
        "--embedding",
        "prerank@v1",
        "--user",
        &d.p("user.json"),
        "--candidates",
        &d.p("none.txt"),
    ]);
    assert!(
        e.contains("none.txt: no candidate ids") && e.contains("--all"),
        "{e}"
    );
    assert!(!e.contains("Query::full_scan"), "{e}");
}

/// `query` on store `s` of `d` with embedding `key`, the user vector in
/// `user.json` and the candidates in `c.txt`, then `extra`.
fn query_args(d: &Data, key: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "query".into(),
        d.p("s"),
        "--embedding".into(),
        key.into(),
        "--user".into(),
        d.p("user.json"),
        "--candidates".into(),
        d.p("c.txt"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A user vector tagged with another embedding version is refused (never
/// scored against this version's items), as is an unknown key; a tag that
/// matches is accepted.
#[test]
fn a_user_vector_of_another_version_or_with_unknown_keys_is_refused() {
    let d = Data::new();
    d.build_f32("s", &[]);
    std::fs::write(d.path("c.txt"), format!("{}\n", d.ids[0])).unwrap();
    let v = vec![0.5f32; DIM];
    let query = |user: &str| {
        std::fs::write(d.path("user.json"), user).unwrap();
        common::tool()
            .args(query_args(&d, "prerank@v1", &[]))
            .output()
            .unwrap()
    };
    let o = query(&format!(
        r#"{{"vector": {v:?}, "embedding": "prerank@v1"}}"#
    ));
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    for (user, want) in [
        (
            format!(r#"{{"vector": {v:?}, "embedding": "prerank@v2"}}"#),
            "is for embedding \"prerank@v2\", but the query is for \"prerank@v1\"",
        ),
        (
            format!(r#"{{"vector": {v:?}, "version": "v2"}}"#),
            "unknown key \"version\"",
        ),
    ] {
        let o = query(&user);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("user.json") && e.contains(want), "{e}");
    }
}

/// `--inputs` is parsed strictly: a key given twice, or a category code
/// that is not plain decimal (`"01"` would be code 1 beside `"1"`), is
/// refused naming the field.
#[test]
fn ambiguous_user_inputs_are_refused_naming_the_field() {
    let d = Data::new();
    d.build("s");
    std::fs::write(d.path("c.txt"), format!("{}\n", d.ids[0])).unwrap();
    std::fs::write(d.path("user.json"), format!("{:?}", vec![0.5f32; DIM])).unwrap();
    for (inputs, want) in [
        (
            r#"{"by_item": {"user_category_ctr": {"1": [1], "01": [2]}}}"#,
            "by_item.user_category_ctr.01: is not a category code written in decimal",
        ),
        (
            r#"{"by_item": {"user_category_ctr": {"+1": [1]}}}"#,
            "by_item.user_category_ctr.+1",
        ),
        (
            r#"{"dense": {"user_stats": [1, 2], "user_stats": [3, 4]}}"#,
            "dense.user_stats: is given twice",
        ),
    ] {
        let args = query_args(&d, "prerank@v1", &["--three-tower", "--inputs", inputs]);
        let e = fails(&strs(&args));
        assert!(e.contains("--inputs") && e.contains(want), "{e}");
    }
}

/// A `--column` or `--metadata` given twice is a usage error (exit 2),
/// not one silently winning over the other; no store is made.
#[test]
fn repeated_column_and_metadata_options_are_usage_errors() {
    let d = Data::new();
    for (extra, want) in [
        (
            vec!["--column", "category=1", "--column", "category=2"],
            "--column \"category\" is given twice",
        ),
        (
            vec!["--metadata", "a=1", "--metadata", "a=2"],
            "--metadata \"a\" is given twice",
        ),
    ] {
        let args = d.build_args("s", "ids.npy", "emb.npy", &extra);
        let e = common::usage_fails(&strs(&args));
        assert!(e.contains(want), "{e}");
        assert!(!d.path("s").exists());
    }
}

/// The tool's own checks of `--embedding` and `--where` values are usage
/// errors (exit 2), as the README says: a key that is not space@version
/// of the schema's characters, and an empty `between` range.
#[test]
fn malformed_embedding_keys_and_empty_ranges_are_usage_errors() {
    let d = Data::new();
    d.build_f32("s", &[]);
    std::fs::write(d.path("c.txt"), format!("{}\n", d.ids[0])).unwrap();
    std::fs::write(d.path("user.json"), format!("{:?}", vec![0.5f32; DIM])).unwrap();
    let q = |key: &str, extra: &[&str]| common::usage_fails(&strs(&query_args(&d, key, extra)));
    let e = q("prerank", &[]);
    assert!(e.contains("not of the form space@version"), "{e}");
    let e = q("prerank@v 1", &[]);
    assert!(e.contains("[A-Za-z0-9_.-]"), "{e}");
    let e = q("prerank@v1", &["--where", "price between 5 1"]);
    assert!(e.contains("is empty (LO > HI)"), "{e}");
    for key in ["p@v 1", "p@v1#x"] {
        let emb = format!("{key}={}", d.p("emb.npy"));
        let e = common::usage_fails(&[
            "build",
            &d.p("t"),
            "--ids",
            &d.p("ids.npy"),
            "--embedding",
            &emb,
        ]);
        assert!(e.contains("[A-Za-z0-9_.-]"), "{key}: {e}");
        assert!(!d.path("t").exists());
    }
}
