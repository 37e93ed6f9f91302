//! The COVID-19 vaccine product table: which products a record may name, by Dutch
//! HPK code (G-Standaard) and/or EU product number, with the SNOMED CT vaccine type.
//!
//! Owns: the product data (kept as data, so adding a product is one table row) and
//! the look-ups over it.
//! Must not: do any I/O (no files, clock or logging); the table is compiled in.
//! Called by: [`crate::schema`] record validation (`vaccination.hpk_code`,
//! `vaccination.eu_product_number`), which the intake service and the offline
//! `validate` CLI run; later also the FHIR output (vaccine code and type).

/// SNOMED CT: SARS-CoV-2 mRNA vaccine.
pub const SNOMED_MRNA: &str = "1119349007";
/// SNOMED CT: SARS-CoV-2 viral vector vaccine (as used by the Dutch registry).
pub const SNOMED_VIRAL_VECTOR: &str = "29061000087103";
/// SNOMED CT: SARS-CoV-2 recombinant spike protein antigen vaccine.
pub const SNOMED_PROTEIN_SUBUNIT: &str = "1162643001";
/// SNOMED CT: inactivated whole SARS-CoV-2 antigen vaccine.
pub const SNOMED_INACTIVATED: &str = "1157024006";

/// One authorised COVID-19 vaccine product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// Dutch product code (G-Standaard HPK), when the product has one.
    pub hpk: Option<&'static str>,
    /// EU product number ("EU/1/20/1528").
    pub eu_number: &'static str,
    /// Brand name, with the manufacturer.
    pub name: &'static str,
    /// SNOMED CT code of the vaccine type.
    pub snomed_type: &'static str,
    /// EMA organisation id of the marketing authorisation holder, when known.
    pub holder: Option<&'static str>,
}

/// Every product a record may name. Add a row to support a new product.
pub const PRODUCTS: &[Product] = &[
    Product {
        hpk: Some("2924528"),
        eu_number: "EU/1/20/1528",
        name: "Pfizer/BioNTech Comirnaty",
        snomed_type: SNOMED_MRNA,
        holder: Some("ORG-100030215"),
    },
    Product {
        hpk: Some("2924536"),
        eu_number: "EU/1/20/1507",
        name: "Moderna Spikevax",
        snomed_type: SNOMED_MRNA,
        holder: Some("ORG-100031184"),
    },
    Product {
        hpk: Some("2925508"),
        eu_number: "EU/1/21/1529",
        name: "AstraZeneca Vaxzevria",
        snomed_type: SNOMED_VIRAL_VECTOR,
        holder: Some("ORG-100001699"),
    },
    Product {
        hpk: Some("2934701"),
        eu_number: "EU/1/20/1525",
        name: "Janssen Jcovden",
        snomed_type: SNOMED_VIRAL_VECTOR,
        holder: Some("ORG-100001417"),
    },
    Product {
        hpk: None,
        eu_number: "EU/1/21/1618",
        name: "Novavax Nuvaxovid",
        snomed_type: SNOMED_PROTEIN_SUBUNIT,
        holder: Some("ORG-100032020"),
    },
    Product {
        hpk: None,
        eu_number: "EU/1/21/1624",
        name: "Valneva COVID-19 Vaccine (inactivated, adjuvanted)",
        snomed_type: SNOMED_INACTIVATED,
        holder: None,
    },
    Product {
        hpk: None,
        eu_number: "EU/1/21/1580",
        name: "Sanofi Pasteur VidPrevtyn Beta",
        snomed_type: SNOMED_PROTEIN_SUBUNIT,
        holder: None,
    },
    Product {
        hpk: None,
        eu_number: "EU/1/22/1709",
        name: "Hipra Bimervax",
        snomed_type: SNOMED_PROTEIN_SUBUNIT,
        holder: None,
    },
];

/// The product with this HPK code (exact match).
pub fn by_hpk(code: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.hpk == Some(code))
}

/// The product with this EU product number (exact match).
pub fn by_eu_number(number: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.eu_number == number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_unique_codes() {
        assert_eq!(PRODUCTS.len(), 8);
        for (i, a) in PRODUCTS.iter().enumerate() {
            for b in &PRODUCTS[i + 1..] {
                assert_ne!(a.eu_number, b.eu_number);
                if a.hpk.is_some() {
                    assert_ne!(a.hpk, b.hpk);
                }
            }
            assert_eq!(by_eu_number(a.eu_number), Some(a));
            if let Some(hpk) = a.hpk {
                assert_eq!(by_hpk(hpk), Some(a));
                assert_eq!(hpk.len(), 7);
            }
        }
        assert_eq!(PRODUCTS.iter().filter(|p| p.hpk.is_some()).count(), 4);
    }

    #[test]
    fn lookups() {
        assert_eq!(by_hpk("2924528").map(|p| p.eu_number), Some("EU/1/20/1528"));
        assert_eq!(
            by_hpk("2934701").map(|p| p.snomed_type),
            Some(SNOMED_VIRAL_VECTOR)
        );
        assert_eq!(by_eu_number("EU/1/22/1709").map(|p| p.hpk), Some(None));
        assert_eq!(by_hpk("1234567"), None);
        assert_eq!(by_hpk(""), None);
        assert_eq!(by_eu_number("EU/1/99/9999"), None);
    }
}
