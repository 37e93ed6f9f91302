//! Compiles `proto/schakel/v1/*.proto` with protox (pure Rust: no system protoc
//! needed) and generates prost messages and tonic services from it.

use std::error::Error;

/// Enum-typed fields: prost stores them as `i32`, so for the JSON file formats
/// they get a serde adapter that reads and writes the enum's proto name.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("VaccinationRecord.action", "action"),
    ("VaccinationRecord.consent", "consent"),
    ("AnonymousSubject.age_band", "age_band"),
    ("Performer.id_type", "organization_id_type"),
    ("Performer.type", "performer_type"),
    ("RecordResult.status", "record_status"),
    ("Finding.severity", "severity"),
    ("TokenResult.outcome", "token_outcome"),
];

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "proto/schakel/v1/schakel.proto",
        "proto/schakel/v1/admin.proto",
        "proto/schakel/v1/operations.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;

    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("schakel_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let mut builder = tonic_prost_build::configure()
        .codec_path("crate::codec::StrictProstCodec").message_attribute(
        ".schakel.v1",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
    );
    for (field, adapter) in ENUM_FIELDS {
        builder = builder.field_attribute(
            format!(".schakel.v1.{field}"),
            format!("#[serde(with = \"crate::proto::serde_enum::{adapter}\")]"),
        );
    }
    builder.compile_fds(fds)?;
    Ok(())
}
