//! The UZI parser (`schakel::uzi`) over arbitrary input: a subjectAltName's
//! DER, the compound string alone, or any bytes as the IA5String of a
//! well-formed UZI otherName. Never a panic; what parses is well-formed
//! (8-digit URA, a known card type) and parses again the same; what fails
//! has one of the two documented codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schakel::uzi::{UziCertificate, UziError, UziName};

fn check_name(name: &UziName) {
    let ura = name.ura.as_str();
    assert!(ura.len() == 8 && ura.bytes().all(|b| b.is_ascii_digit()));
    assert!("ZNMS".contains(name.card_type.letter()));
    let again = format!(
        "{}-{}-{}-{}-{}-{}-{}",
        name.ca_oid,
        name.version,
        name.uzi_number,
        name.card_type.letter(),
        ura,
        name.role,
        name.agb
    );
    assert_eq!(UziName::parse(&again).as_ref(), Ok(name));
}

fn check(result: Result<UziCertificate, UziError>) {
    match result {
        Ok(cert) => check_name(&cert.name),
        Err(e) => assert!(matches!(e.code(), "UZI_MISSING" | "UZI_MALFORMED")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check(UziCertificate::from_subject_alt_name(rest)),
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                match UziName::parse(text) {
                    Ok(name) => check_name(&name),
                    Err(e) => assert_eq!(e.code(), "UZI_MALFORMED"),
                }
            }
        }
        _ => check(UziCertificate::from_subject_alt_name(&schakel::uzi::dev::uzi_san(rest))),
    }
});
