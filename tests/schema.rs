//! Schema validation and dtype layout.
use vstore::{Dtype, Error, Schema};

#[test]
fn valid_schema_passes_and_keys_are_space_at_version() {
    let s = Schema::new()
        .categorical("category", 0)
        .numeric("price", 1.5)
        .stat("ctr_1d", 0.0)
        .embedding("prerank", "v42", 64, Dtype::F16)
        .embedding("prerank", "v43", 64, Dtype::I8);
    s.validate().unwrap();
    assert_eq!(s.embedding_keys(), vec!["prerank@v42", "prerank@v43"]);
    assert_eq!(s.embedding_def("prerank@v43").unwrap().dtype, Dtype::I8);
    assert!(s.embedding_def("prerank@v44").is_none());
    assert_eq!(s.profile_index("price").unwrap(), 1);
}

#[test]
fn bad_schemas_are_refused_naming_the_column() {
    let dup = Schema::new().numeric("a", 0.0).categorical("a", 0);
    assert!(matches!(dup.validate(), Err(Error::Schema(m)) if m.contains("\"a\"")));
    // Filters and models name columns without their group.
    let both = Schema::new().numeric("x", 0.0).stat("x", 0.0);
    assert!(
        matches!(both.validate(), Err(Error::Schema(ref m)) if m.contains("\"x\" is both")),
        "{:?}",
        both.validate()
    );
    let both = Schema::new().categorical("x", 0).stat("x", 0.0);
    assert!(both.validate().is_err());
    let nan = Schema::new().stat("ctr", f32::NAN);
    assert!(matches!(nan.validate(), Err(Error::Schema(m)) if m.contains("ctr")));
    let zero_dim = Schema::new().embedding("s", "v1", 0, Dtype::F32);
    assert!(matches!(zero_dim.validate(), Err(Error::Schema(m)) if m.contains("s@v1")));
    let bad_tag = Schema::new().embedding("s/x", "v1", 8, Dtype::F32);
    assert!(bad_tag.validate().is_err());
    let dup_emb =
        Schema::new()
            .embedding("s", "v1", 8, Dtype::F32)
            .embedding("s", "v1", 16, Dtype::F16);
    assert!(dup_emb.validate().is_err());
}

#[test]
fn unknown_column_names_what_exists() {
    let s = Schema::new().numeric("price", 0.0);
    match s.profile_index("cost") {
        Err(Error::NoSuchColumn {
            name, available, ..
        }) => {
            assert_eq!(name, "cost");
            assert_eq!(available, vec!["price".to_string()]);
        }
        other => panic!("expected NoSuchColumn, got {other:?}"),
    }
}

#[test]
fn row_strides_are_16_byte_aligned() {
    assert_eq!(Dtype::F32.row_stride(64), 256);
    assert_eq!(Dtype::F16.row_stride(64), 128);
    assert_eq!(Dtype::Bf16.row_stride(3), 16);
    assert_eq!(Dtype::I8.row_bytes(64), 68);
    assert_eq!(Dtype::I8.row_stride(64), 80);
    assert_eq!(Dtype::parse("bfloat16").unwrap(), Dtype::Bf16);
    assert!(Dtype::parse("f64").is_err());
}
