//! Export files: the supplier's daily file, read into records that keep their
//! line number.
//!
//! Owns: the standard CSV layout (see `docs/export-format.md`: UTF-8, a header
//! row naming the columns, `;` or `,` separated, RFC 4180 quoting), NDJSON (one
//! `VaccinationRecord` as JSON per line) and the JSON batch file
//! (`{"header": ..., "records": [...]}`), and the per-record problems found while
//! reading a row ([`RowProblem`]); the error report ([`report`]).
//! Must not: do I/O beyond reading the bytes it is given (the CLI reads files),
//! validate records (that is [`crate::schema`]), or put a submitted value into a
//! message: problems name the column and the line, never the cell's content.
//! Called by: `schakel push` and `schakel validate`.

pub mod report;

use std::collections::HashMap;

use crate::proto::{
    Action, AgeBand, AnonymousSubject, Batch, Consent, OrganizationIdType, Patient, Performer,
    PerformerType, Vaccination, VaccinationRecord,
};

/// Code of a row whose number of cells differs from the header's.
pub const CODE_COLUMN_COUNT: &str = "COLUMN_COUNT";
/// Code of a cell (or an NDJSON line) that cannot be read as its type.
pub const CODE_INVALID_VALUE: &str = "INVALID_VALUE";

/// The columns of the standard CSV layout, in their documented order.
pub const COLUMNS: &[&str] = &[
    "message_id",
    "action",
    "refers_to",
    "consent",
    "bsn",
    "given_names",
    "infix",
    "family_name",
    "birth_date",
    "age_band",
    "hpk_code",
    "eu_product_number",
    "vaccination_date",
    "dose_number",
    "total_doses",
    "lot_number",
    "country",
    "organization_id",
    "organization_id_type",
    "performer_type",
    "is_test",
];

/// The file layouts we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The standard CSV layout, with its separator.
    Csv {
        /// `b';'` or `b','`.
        separator: u8,
    },
    /// One `VaccinationRecord` JSON object per line.
    Ndjson,
    /// One `Batch` JSON object; "line" is then the record's position (from 1).
    JsonBatch,
}

/// One record read from a file.
#[derive(Debug, Clone)]
pub struct ParsedRecord {
    /// The line in the file where the record starts (the header is line 1 of a
    /// CSV file).
    pub line: u64,
    /// The record as read (not yet validated or normalised).
    pub record: VaccinationRecord,
}

/// A row that could not be read into a record: it is reported, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// The line in the file where the row starts.
    pub line: u64,
    /// The row's message id when it could be read, else empty.
    pub message_id: String,
    /// The column (CSV) or field that could not be read; "-" for the whole row.
    pub field: String,
    /// [`CODE_COLUMN_COUNT`] or [`CODE_INVALID_VALUE`].
    pub code: &'static str,
    /// What is wrong, without the cell's content.
    pub message: String,
}

/// A file read into records.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// The layout found.
    pub format: Format,
    /// The readable rows, in file order.
    pub records: Vec<ParsedRecord>,
    /// The unreadable rows, in file order.
    pub problems: Vec<RowProblem>,
    /// `source_system` of a JSON batch file's header, when it names one.
    pub source_system: Option<String>,
}

impl ParsedFile {
    /// Readable plus unreadable rows.
    pub fn rows(&self) -> usize {
        self.records.len() + self.problems.len()
    }
}

/// Why a file as a whole cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// Not UTF-8.
    #[error("the file is not UTF-8 text (first invalid byte at line {line}); export it as UTF-8")]
    NotUtf8 {
        /// Line of the first invalid byte.
        line: u64,
    },
    /// Nothing but whitespace.
    #[error("the file is empty")]
    Empty,
    /// The CSV header row has no `message_id` column.
    #[error(
        "the header row (line 1) has no message_id column: every row needs a message id, \
         because the gateway recognises a resent record by it; add a message_id column \
         holding the source system's stable id of each vaccination"
    )]
    NoMessageIdColumn,
    /// The CSV header names a column we do not know.
    #[error(
        "the header row (line 1) names an unknown column {name:?}; the known columns are: {known}"
    )]
    UnknownColumn {
        /// The column header as written.
        name: String,
        /// The known columns.
        known: String,
    },
    /// The CSV header names a column twice.
    #[error("the header row (line 1) names the column {name:?} twice")]
    DuplicateColumn {
        /// The column.
        name: String,
    },
    /// A quoted field never ends.
    #[error("a quoted field starting at line {line} is never closed")]
    UnclosedQuote {
        /// Where the quote opened.
        line: u64,
    },
    /// A JSON batch file that is not a batch.
    #[error("the file is not a JSON batch: {0}")]
    NotABatch(String),
    /// The file holds a header row or batch but no records.
    #[error("the file holds no records")]
    NoRecords,
}

/// Reads an export file. `name` (the file name) picks the layout when its
/// extension is `.csv`, `.ndjson`/`.jsonl` or `.json`; otherwise the content does
/// (a first `{` means NDJSON, anything else CSV).
///
/// # Errors
/// The file as a whole is unusable: not UTF-8, empty, a CSV header without a
/// `message_id` column or with an unknown column, an unclosed quote, a `.json`
/// file that is not a batch. Problems of single rows are in
/// [`ParsedFile::problems`].
pub fn parse(name: &str, bytes: &[u8]) -> Result<ParsedFile, ExportError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ExportError::NotUtf8 {
        line: 1 + bytes
            .get(..e.valid_up_to())
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ExportError::Empty);
    }
    let lower = name.to_ascii_lowercase();
    let parsed = if lower.ends_with(".csv") {
        parse_csv(text)?
    } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        parse_ndjson(text)
    } else if lower.ends_with(".json") {
        parse_json_batch(text)?
    } else if text.trim_start().starts_with('{') {
        parse_ndjson(text)
    } else {
        parse_csv(text)?
    };
    if parsed.rows() == 0 {
        return Err(ExportError::NoRecords);
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------

/// One CSV row: where it starts and its cells.
struct Row {
    line: u64,
    cells: Vec<String>,
}

/// `;` or `,`: whichever occurs more often outside quotes in the header line.
fn detect_separator(text: &str) -> u8 {
    let (mut semi, mut comma, mut quoted) = (0usize, 0usize, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => semi += 1,
            ',' if !quoted => comma += 1,
            '\n' if !quoted => break,
            _ => {}
        }
    }
    if semi > comma {
        b';'
    } else {
        b','
    }
}

/// Splits CSV text into rows (RFC 4180: `"` quotes, `""` inside quotes is a
/// quote, separators and line breaks inside quotes are content). Blank lines
/// are skipped.
fn split_rows(text: &str, separator: u8) -> Result<Vec<Row>, ExportError> {
    let sep = char::from(separator);
    let mut rows = Vec::new();
    let mut cells: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut line: u64 = 1;
    let mut row_line: u64 = 1;
    let mut quote_line: u64 = 0;
    let mut in_quotes = false;
    let mut row_has_content = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    cell.push('\n');
                }
                _ => cell.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                quote_line = line;
                row_has_content = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if row_has_content {
                    cells.push(std::mem::take(&mut cell));
                    rows.push(Row {
                        line: row_line,
                        cells: std::mem::take(&mut cells),
                    });
                } else {
                    cell.clear();
                }
                row_has_content = false;
                line += 1;
                row_line = line;
            }
            c if c == sep => {
                cells.push(std::mem::take(&mut cell));
                row_has_content = true;
            }
            _ => {
                if !c.is_whitespace() {
                    row_has_content = true;
                }
                cell.push(c);
            }
        }
    }
    if in_quotes {
        return Err(ExportError::UnclosedQuote { line: quote_line });
    }
    if row_has_content || !cells.is_empty() {
        cells.push(cell);
        rows.push(Row {
            line: row_line,
            cells,
        });
    }
    Ok(rows)
}

fn parse_csv(text: &str) -> Result<ParsedFile, ExportError> {
    let separator = detect_separator(text);
    let mut rows = split_rows(text, separator)?.into_iter();
    let header = rows.next().ok_or(ExportError::Empty)?;
    let mut columns: Vec<&'static str> = Vec::with_capacity(header.cells.len());
    for name in &header.cells {
        let wanted = name.trim().to_ascii_lowercase();
        let Some(&known) = COLUMNS.iter().find(|&&c| c == wanted) else {
            return Err(ExportError::UnknownColumn {
                name: name.trim().to_owned(),
                known: COLUMNS.join(", "),
            });
        };
        if columns.contains(&known) {
            return Err(ExportError::DuplicateColumn {
                name: known.to_owned(),
            });
        }
        columns.push(known);
    }
    let Some(id_col) = columns.iter().position(|&c| c == "message_id") else {
        return Err(ExportError::NoMessageIdColumn);
    };
    let mut out = ParsedFile {
        format: Format::Csv { separator },
        records: Vec::new(),
        problems: Vec::new(),
        source_system: None,
    };
    for row in rows {
        // Spreadsheets export empty rows as ";;;;": skip them like blank lines.
        if row.cells.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let message_id = row
            .cells
            .get(id_col)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if row.cells.len() != columns.len() {
            out.problems.push(RowProblem {
                line: row.line,
                message_id,
                field: "-".into(),
                code: CODE_COLUMN_COUNT,
                message: format!(
                    "the row has {} cells but the header names {} columns; check the separator and quoting",
                    row.cells.len(),
                    columns.len()
                ),
            });
            continue;
        }
        let cells: HashMap<&str, &str> = columns
            .iter()
            .zip(&row.cells)
            .map(|(&c, v)| (c, v.trim()))
            .collect();
        match record_from_cells(&cells) {
            Ok(record) => out.records.push(ParsedRecord {
                line: row.line,
                record,
            }),
            Err((field, message)) => out.problems.push(RowProblem {
                line: row.line,
                message_id,
                field: field.to_owned(),
                code: CODE_INVALID_VALUE,
                message,
            }),
        }
    }
    Ok(out)
}

type CellError = (&'static str, String);

fn enum_cell(
    cells: &HashMap<&str, &str>,
    column: &'static str,
    parse: impl Fn(&str) -> Option<i32>,
    allowed: &str,
) -> Result<i32, CellError> {
    let value = cells.get(column).copied().unwrap_or("");
    if value.is_empty() {
        return Ok(0);
    }
    parse(&value.to_ascii_uppercase()).ok_or_else(|| {
        (
            column,
            format!("{column} is not a known value (use {allowed})"),
        )
    })
}

fn number_cell(cells: &HashMap<&str, &str>, column: &'static str) -> Result<u32, CellError> {
    let value = cells.get(column).copied().unwrap_or("");
    if value.is_empty() {
        return Ok(0);
    }
    value
        .parse::<u32>()
        .map_err(|_| (column, format!("{column} must be a whole number")))
}

fn bool_cell(cells: &HashMap<&str, &str>, column: &'static str) -> Result<bool, CellError> {
    match cells
        .get(column)
        .copied()
        .unwrap_or("")
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "0" | "false" | "no" | "n" | "nee" => Ok(false),
        "1" | "true" | "yes" | "y" | "ja" | "j" => Ok(true),
        _ => Err((column, format!("{column} must be true or false"))),
    }
}

fn record_from_cells(cells: &HashMap<&str, &str>) -> Result<VaccinationRecord, CellError> {
    let text = |c: &str| cells.get(c).copied().unwrap_or("").to_owned();
    let action = enum_cell(
        cells,
        "action",
        |s| Action::from_str_name(s).map(|a| a as i32),
        "REGISTER, CORRECT or RETRACT",
    )?;
    let consent = enum_cell(
        cells,
        "consent",
        |s| Consent::from_str_name(s).map(|a| a as i32),
        "GIVEN or NOT_GIVEN",
    )?;
    let age_band = enum_cell(
        cells,
        "age_band",
        |s| AgeBand::from_str_name(s).map(|a| a as i32),
        "AGE_UNDER_18, AGE_18_TO_64 or AGE_65_AND_OVER",
    )?;
    let id_type = enum_cell(
        cells,
        "organization_id_type",
        |s| OrganizationIdType::from_str_name(s).map(|a| a as i32),
        "AGB or URA",
    )?;
    let performer_type = enum_cell(
        cells,
        "performer_type",
        |s| PerformerType::from_str_name(s).map(|a| a as i32),
        "GP, GGD, HOSPITAL, CARE_INSTITUTION, OCCUPATIONAL_HEALTH or OTHER",
    )?;
    let patient = Patient {
        bsn: text("bsn"),
        given_names: text("given_names"),
        infix: text("infix"),
        family_name: text("family_name"),
        birth_date: text("birth_date"),
    };
    let has_patient = patient != Patient::default();
    Ok(VaccinationRecord {
        message_id: text("message_id"),
        action,
        refers_to: text("refers_to"),
        consent,
        patient: has_patient.then_some(patient),
        anonymous: (age_band != 0).then_some(AnonymousSubject { age_band }),
        vaccination: Some(Vaccination {
            hpk_code: text("hpk_code"),
            eu_product_number: text("eu_product_number"),
            date: text("vaccination_date"),
            dose_number: number_cell(cells, "dose_number")?,
            total_doses: number_cell(cells, "total_doses")?,
            lot_number: text("lot_number"),
            country: text("country"),
        }),
        performer: Some(Performer {
            organization_id: text("organization_id"),
            id_type,
            r#type: performer_type,
        }),
        is_test: bool_cell(cells, "is_test")?,
    })
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// A serde error described without the offending value (serde's own messages
/// may quote it).
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("not valid JSON (column {})", e.column())
        }
        Category::Data => format!(
            "not a VaccinationRecord: a field is unknown or has the wrong type or value (column {})",
            e.column()
        ),
    }
}

fn parse_ndjson(text: &str) -> ParsedFile {
    let mut out = ParsedFile {
        format: Format::Ndjson,
        records: Vec::new(),
        problems: Vec::new(),
        source_system: None,
    };
    for (n, line) in text.lines().enumerate() {
        let line_no = n as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<VaccinationRecord>(line) {
            Ok(record) => out.records.push(ParsedRecord {
                line: line_no,
                record,
            }),
            Err(e) => {
                let message_id = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("message_id")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                out.problems.push(RowProblem {
                    line: line_no,
                    message_id,
                    field: "-".into(),
                    code: CODE_INVALID_VALUE,
                    message: describe_json_error(&e),
                });
            }
        }
    }
    out
}

fn parse_json_batch(text: &str) -> Result<ParsedFile, ExportError> {
    let batch: Batch =
        serde_json::from_str(text).map_err(|e| ExportError::NotABatch(describe_json_error(&e)))?;
    let source_system = batch
        .header
        .map(|h| h.source_system)
        .filter(|s| !s.is_empty());
    Ok(ParsedFile {
        format: Format::JsonBatch,
        records: batch
            .records
            .into_iter()
            .enumerate()
            .map(|(i, record)| ParsedRecord {
                line: i as u64 + 1,
                record,
            })
            .collect(),
        problems: Vec::new(),
        source_system,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "EX-1;REGISTER;;GIVEN;249566758;Jan;van der;Berg;1950-04-12;;2924528;EU/1/20/1528;2021-03-04;1;2;EW2243;NL;01234567;AGB;GP;false";

    fn csv(rows: &[&str]) -> String {
        let mut s = COLUMNS.join(";");
        for r in rows {
            s.push('\n');
            s.push_str(r);
        }
        s
    }

    #[test]
    fn reads_a_semicolon_csv_into_records_with_lines() {
        let text = csv(&[
            GOOD,
            ";;;;;;;;;;;;;;;;;;;;",
            "   ",
            &GOOD.replace("EX-1", "EX-2"),
        ]);
        let f = parse("day.csv", text.as_bytes()).unwrap();
        assert_eq!(f.format, Format::Csv { separator: b';' });
        assert!(f.problems.is_empty());
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.records[0].line, 2);
        assert_eq!(f.records[1].line, 5);
        let r = &f.records[0].record;
        assert_eq!(r.message_id, "EX-1");
        assert_eq!(r.action, Action::Register as i32);
        assert_eq!(r.consent, Consent::Given as i32);
        assert_eq!(r.patient.as_ref().unwrap().infix, "van der");
        assert!(r.anonymous.is_none());
        let v = r.vaccination.as_ref().unwrap();
        assert_eq!((v.dose_number, v.total_doses), (1, 2));
        assert_eq!(v.date, "2021-03-04");
        assert_eq!(
            r.performer.as_ref().unwrap().id_type,
            OrganizationIdType::Agb as i32
        );
    }

    #[test]
    fn reads_a_comma_csv_with_quotes_and_any_column_order() {
        let text = "consent,message_id,family_name,given_names\r\n\
                    GIVEN,A-1,\"Berg, van den\",\"Jan \"\"J\"\"\"\r\n\
                    GIVEN,A-2,\"two\nlines\",x\r\n\
                    GIVEN,A-3,y,z\r\n";
        let f = parse("x.csv", text.as_bytes()).unwrap();
        assert_eq!(f.format, Format::Csv { separator: b',' });
        assert_eq!(f.records.len(), 3);
        let p = f.records[0].record.patient.as_ref().unwrap();
        assert_eq!(p.family_name, "Berg, van den");
        assert_eq!(p.given_names, "Jan \"J\"");
        assert_eq!(f.records[1].line, 3);
        assert_eq!(f.records[2].line, 5, "a quoted line break counts as a line");
    }

    #[test]
    fn a_file_without_message_id_is_refused_with_the_reason() {
        let text = "consent;bsn\nGIVEN;249566758\n";
        let err = parse("x.csv", text.as_bytes()).unwrap_err();
        assert_eq!(err, ExportError::NoMessageIdColumn);
        assert!(err.to_string().contains("no message_id column"));
        assert!(err.to_string().contains("resent"));
    }

    #[test]
    fn unknown_and_duplicate_columns_are_refused() {
        let err = parse("x.csv", b"message_id;bsnn\nA;1\n").unwrap_err();
        assert!(matches!(err, ExportError::UnknownColumn { ref name, .. } if name == "bsnn"));
        let err = parse("x.csv", b"message_id;MESSAGE_ID\nA;1\n").unwrap_err();
        assert!(matches!(err, ExportError::DuplicateColumn { .. }));
    }

    #[test]
    fn bad_cells_become_row_problems_without_the_value() {
        let text = csv(&[
            &GOOD.replace(";1;2;", ";een;2;"),
            &GOOD.replace("GIVEN", "MAYBE"),
            "EX-9;REGISTER",
            GOOD,
        ]);
        let f = parse("x.csv", text.as_bytes()).unwrap();
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].line, 5);
        let p = &f.problems;
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].line, p[0].field.as_str(), p[0].code),
            (2, "dose_number", CODE_INVALID_VALUE)
        );
        assert!(!p[0].message.contains("een"));
        assert_eq!((p[1].line, p[1].field.as_str()), (3, "consent"));
        assert!(!p[1].message.contains("MAYBE"));
        assert_eq!((p[2].line, p[2].code), (4, CODE_COLUMN_COUNT));
        assert_eq!(p[2].message_id, "EX-9");
    }

    #[test]
    fn unclosed_quote_and_bad_encoding_are_refused() {
        assert_eq!(
            parse("x.csv", b"message_id\nA\n\"B\n").unwrap_err(),
            ExportError::UnclosedQuote { line: 3 }
        );
        assert_eq!(
            parse("x.csv", b"message_id\nA\n\xff\n").unwrap_err(),
            ExportError::NotUtf8 { line: 3 }
        );
        assert_eq!(parse("x.csv", b" \n").unwrap_err(), ExportError::Empty);
        assert_eq!(
            parse("x.csv", b"message_id\n").unwrap_err(),
            ExportError::NoRecords
        );
    }

    #[test]
    fn reads_ndjson_with_enum_names_and_reports_bad_lines() {
        let good = serde_json::to_string(&crate::testkit::record("N-1")).unwrap();
        let text =
            format!("{good}\n\n{{\"message_id\":\"N-2\",\"consent\":\"PERHAPS\"}}\nnot json\n");
        let f = parse("x.ndjson", text.as_bytes()).unwrap();
        assert_eq!(f.format, Format::Ndjson);
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].record, crate::testkit::record("N-1"));
        assert_eq!(f.problems.len(), 2);
        assert_eq!(
            (f.problems[0].line, f.problems[0].message_id.as_str()),
            (3, "N-2")
        );
        assert!(!f.problems[0].message.contains("PERHAPS"));
        assert_eq!(f.problems[1].line, 4);
    }

    #[test]
    fn reads_a_json_batch() {
        let text = include_str!("../../examples/batch-2021-03-04.json");
        let f = parse("batch-2021-03-04.json", text.as_bytes()).unwrap();
        assert_eq!(f.format, Format::JsonBatch);
        assert_eq!(f.records.len(), 6);
        assert_eq!(f.records[5].line, 6);
        assert_eq!(f.source_system.as_deref(), Some("Example HIS 4.2"));
    }

    #[test]
    fn the_example_csv_reads() {
        let text = include_str!("../../examples/export-2021-03-04.csv");
        let f = parse("export-2021-03-04.csv", text.as_bytes()).unwrap();
        assert_eq!(f.rows(), 8);
        assert_eq!(f.problems.len(), 1);
    }
}
