//! `build` from real files: what the store holds afterwards, read back
//! through the library.

mod common;

use common::{npy_i64, ok, parquet_file, strs, Data, PqCol, DIM, ROWS};
use vstore::{ColumnKind, Dtype, Store};

#[test]
fn build_from_npy_parquet_csv_and_bundle_holds_every_value() {
    let d = Data::new();
    let out = d.build("store");
    assert!(out.contains("published snapshot 1"), "{out}");
    assert!(out.contains("300 items"), "{out}");
    let store = Store::open(d.path("store")).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.len(), ROWS);
    let schema = snap.schema();
    // Inferred kinds: integer profile column -> categorical, float -> numeric.
    assert_eq!(schema.profile[0].name, "category");
    assert!(matches!(
        schema.profile[0].kind,
        ColumnKind::Categorical { default: 0 }
    ));
    assert_eq!(schema.profile[1].name, "price");
    assert!(matches!(schema.profile[1].kind, ColumnKind::Numeric { .. }));
    assert_eq!(
        schema
            .stats
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["ctr_1d", "impressions_7d"]
    );
    let def = snap.embedding_def("prerank@v1").unwrap();
    assert_eq!((def.dim as usize, def.dtype), (DIM, Dtype::F16));
    assert_eq!(snap.model_keys(), vec!["prerank@v1".to_string()]);
    for (i, &id) in d.ids.iter().enumerate() {
        assert_eq!(
            snap.get_embedding(id, "prerank@v1").unwrap(),
            common::vector(id, 0)
        );
        assert_eq!(
            snap.get_categorical(id, "category").unwrap(),
            d.category[i].map(|x| x as u32),
            "id {id}"
        );
        assert_eq!(
            snap.get_numeric(id, "price").unwrap(),
            d.price[i].map(|x| x as f32)
        );
        assert_eq!(
            snap.get_stat(id, "ctr_1d").unwrap(),
            d.ctr[i].map(|x| x as f32)
        );
        assert_eq!(
            snap.get_stat(id, "impressions_7d").unwrap(),
            d.imp[i].map(|x| x as f32)
        );
    }
    assert_eq!(snap.metadata("created_by"), Some("vstore-tool build"));
    store.verify().unwrap();
}

#[test]
fn csv_profile_parquet_stats_declared_kinds_defaults_and_metadata() {
    let d = Data::new();
    // i64 ids; a subset of items in the tables (the rest are missing).
    let signed: Vec<i64> = d.ids.iter().map(|&x| x as i64).collect();
    npy_i64(&d.path("ids_i64.npy"), &signed);
    let out = ok(&[
        "build",
        &d.p("s"),
        "--ids",
        &d.p("ids_i64.npy"),
        "--embedding",
        &format!("prerank@v1={}", d.p("emb16.npy")),
        "--embedding",
        &format!("prerank@v2:i8={}", d.p("emb.npy")),
        "--dtype",
        "bf16",
        "--profile",
        &d.p("items.csv"),
        "--stats",
        &d.p("stats.parquet"),
        "--column",
        "category:numeric=-1",
        "--column",
        "price=9.5",
        "--column",
        "ctr_1d=0.01",
        "--metadata",
        "pipeline=nightly",
    ]);
    assert!(out.contains("embeddings [prerank@v1, prerank@v2]"), "{out}");
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    let schema = snap.schema();
    assert!(matches!(schema.profile[0].kind, ColumnKind::Numeric { default } if default == -1.0));
    assert!(matches!(schema.profile[1].kind, ColumnKind::Numeric { default } if default == 9.5));
    assert!(matches!(schema.stats[0].kind, ColumnKind::Numeric { default } if default == 0.01));
    assert_eq!(snap.embedding_def("prerank@v1").unwrap().dtype, Dtype::Bf16);
    assert_eq!(snap.embedding_def("prerank@v2").unwrap().dtype, Dtype::I8);
    assert_eq!(snap.metadata("pipeline"), Some("nightly"));
    // A missing category reads as the declared default through queries'
    // column access; the getter reports it missing.
    let missing = d.ids.iter().position(|&id| id % 11 == 0).unwrap();
    assert_eq!(snap.get_numeric(d.ids[missing], "category").unwrap(), None);
    let present = d.ids.iter().position(|&id| id % 11 != 0).unwrap();
    assert_eq!(
        snap.get_numeric(d.ids[present], "category").unwrap(),
        Some((d.ids[present] % 7) as f32)
    );
}

#[test]
fn tables_may_cover_only_some_items_and_row_groups_are_joined_by_id() {
    let d = Data::new();
    // Reversed order, only every other item, several row groups, f32 values.
    let sel: Vec<usize> = (0..ROWS).rev().step_by(2).collect();
    parquet_file(
        &d.path("part.parquet"),
        &[
            PqCol::I64("item", sel.iter().map(|&i| Some(d.ids[i] as i64)).collect()),
            PqCol::F32("score", sel.iter().map(|&i| Some(i as f32 * 0.5)).collect()),
        ],
        17,
    );
    d.build_f32(
        "s",
        &["--stats", &d.p("part.parquet"), "--id-column", "item", "-q"],
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    for (i, &id) in d.ids.iter().enumerate() {
        let want = sel.contains(&i).then_some(i as f32 * 0.5);
        assert_eq!(snap.get_stat(id, "score").unwrap(), want, "row {i}");
    }
}

#[test]
fn build_with_a_precomputed_bundle() {
    let d = Data::new();
    d.build_f32(
        "s",
        &[
            "--profile",
            &d.p("items.parquet"),
            "--stats",
            &d.p("stats.parquet"),
            "--model",
            &d.p("model"),
            "--precompute",
            "f32",
        ],
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert!(snap.model_is_precomputed("prerank@v1"));
}

#[test]
fn ids_above_2_pow_63_in_npy_csv_and_parquet_and_skipped_columns() {
    let d = Data::new();
    let ids: Vec<u64> = (0..4).map(|i| u64::MAX - 10 + i).collect();
    common::npy_u64(&d.path("big.npy"), &ids);
    let vecs: Vec<f32> = ids
        .iter()
        .flat_map(|&id| common::vector(id % 1000, 0))
        .collect();
    common::npy_f32(&d.path("big_emb.npy"), &vecs, DIM);
    let csv: String = std::iter::once("id,ctr_1d\n".to_string())
        .chain(ids.iter().map(|id| format!("{id},0.5\n")))
        .collect();
    std::fs::write(d.path("big.csv"), csv).unwrap();
    // Parquet: UINT_64 ids (stored as their bits), a string column skipped,
    // and pandas' saved index left out by itself.
    let path = d.path("big.parquet");
    {
        use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
        use std::sync::Arc;
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message t { REQUIRED INT64 id (INTEGER(64,false)); REQUIRED INT32 category; \
                 REQUIRED BYTE_ARRAY title (UTF8); REQUIRED INT64 __index_level_0__; }",
            )
            .unwrap(),
        );
        let f = std::fs::File::create(&path).unwrap();
        let mut w = parquet::file::writer::SerializedFileWriter::new(f, schema, Default::default())
            .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut c = 0;
        while let Some(mut cw) = rg.next_column().unwrap() {
            match c {
                0 => {
                    let v: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
                    cw.typed::<Int64Type>().write_batch(&v, None, None).unwrap();
                }
                1 => {
                    cw.typed::<Int32Type>()
                        .write_batch(&[1, 2, 3, 4], None, None)
                        .unwrap();
                }
                2 => {
                    let v: Vec<ByteArray> = ["a", "b", "c", "d"]
                        .iter()
                        .map(|s| ByteArray::from(*s))
                        .collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&v, None, None)
                        .unwrap();
                }
                _ => {
                    cw.typed::<Int64Type>()
                        .write_batch(&[7, 8, 9, 10], None, None)
                        .unwrap();
                }
            }
            cw.close().unwrap();
            c += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }
    let extra = [
        "--profile",
        &d.p("big.parquet"),
        "--skip-column",
        "title",
        "--stats",
        &d.p("big.csv"),
    ];
    ok(&strs(&d.build_args("s", "big.npy", "big_emb.npy", &extra)));
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert_eq!(
        snap.schema()
            .profile
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["category"]
    );
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            snap.get_categorical(id, "category").unwrap(),
            Some(i as u32 + 1)
        );
        assert_eq!(snap.get_stat(id, "ctr_1d").unwrap(), Some(0.5));
    }
}
