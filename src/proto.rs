//! The generated wire types of `proto/schakel/v1/schakel.proto`, plus the serde
//! adapters that let the JSON file formats name enum values by their proto names
//! (`"consent": "GIVEN"`) instead of numbers.
//!
//! Owns no logic: every other module uses these types, nothing here does I/O.

#![allow(missing_docs)] // generated code documents itself from the .proto comments

tonic::include_proto!("schakel.v1");

/// The encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("schakel_descriptor");

/// serde adapters for `i32` enum fields: written as the proto name, read from the
/// proto name or the number.
pub mod serde_enum {
    macro_rules! adapter {
        ($module:ident, $enum:ty) => {
            pub mod $module {
                use serde::{Deserialize, Deserializer, Serializer};

                pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match <$enum>::try_from(*value) {
                        Ok(e) => s.serialize_str(e.as_str_name()),
                        Err(_) => s.serialize_i32(*value),
                    }
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                    #[derive(Deserialize)]
                    #[serde(untagged)]
                    enum NameOrNumber {
                        Name(String),
                        Number(i32),
                    }
                    match NameOrNumber::deserialize(d)? {
                        NameOrNumber::Number(n) => Ok(n),
                        NameOrNumber::Name(name) => {
                            <$enum>::from_str_name(&name.to_ascii_uppercase())
                                .map(|e| e as i32)
                                .ok_or_else(|| {
                                    serde::de::Error::custom(format!(
                                        "unknown {} value {:?}",
                                        stringify!($module),
                                        name
                                    ))
                                })
                        }
                    }
                }
            }
        };
    }

    adapter!(action, super::super::Action);
    adapter!(consent, super::super::Consent);
    adapter!(age_band, super::super::AgeBand);
    adapter!(organization_id_type, super::super::OrganizationIdType);
    adapter!(performer_type, super::super::PerformerType);
    adapter!(record_status, super::super::RecordStatus);
    adapter!(severity, super::super::Severity);
    adapter!(token_outcome, super::super::TokenOutcome);
}
