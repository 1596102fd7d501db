//! SQL for a parsed query, and the C-FIND response identifiers.
//!
//! Every condition is written so that SQLite can use the contract's indexes: equality and
//! `IN` on keys, `GLOB` with a fixed prefix on BINARY-collated columns (which SQLite turns
//! into a range on the index), `BETWEEN` on dates. UID lists go in as one JSON array read by
//! `json_each`, so a 10,000-UID list costs one bound parameter, not 10,000.
//!
//! The same statements run on PostgreSQL ([`Dialect::Postgres`], design §1.3): numbered
//! `$n` placeholders, `LIKE` (with `\`, `%`, `_` escaped) for `GLOB` on the `COLLATE "C"`
//! columns, and `= ANY($n::text[])` for the JSON array. Both engines compare text bytewise,
//! so both give the same matches; the tests in `tests/query_pg.rs` hold them to it.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::keys::{Key, KeyValue, Matching};
use super::parse::{CHARSET_VRS, range_ends};
use super::{Dialect, Found, InstanceRef, Level, Query, QueryError, Service};

/// Lists longer than this go through `json_each` instead of one parameter per value.
const INLINE_LIST: usize = 16;

/// The joins that give one row per entity of `level` with the attributes of the levels above.
fn from_clause(level: Level) -> &'static str {
    match level {
        Level::Patient => "patients p",
        Level::Study => "studies st JOIN patients p ON p.pk = st.patient_pk",
        Level::Series => {
            "series se JOIN studies st ON st.study_uid = se.study_uid \
             JOIN patients p ON p.pk = st.patient_pk"
        }
        Level::Image => {
            "instances i JOIN series se ON se.series_uid = i.series_instance_uid \
             JOIN studies st ON st.study_uid = se.study_uid \
             JOIN patients p ON p.pk = st.patient_pk"
        }
    }
}

/// A bound parameter of a query statement, for either engine.
#[derive(Debug, Clone, PartialEq)]
enum QParam {
    Int(i64),
    Text(String),
    /// A long list of values: one JSON array text on SQLite (read by `json_each`), one
    /// `text[]` on PostgreSQL.
    TextList(Vec<String>),
}

impl From<i64> for QParam {
    fn from(n: i64) -> Self {
        QParam::Int(n)
    }
}

impl From<String> for QParam {
    fn from(s: String) -> Self {
        QParam::Text(s)
    }
}

impl rusqlite::ToSql for QParam {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            QParam::Int(n) => ToSqlOutput::from(*n),
            QParam::Text(s) => ToSqlOutput::from(s.as_str()),
            QParam::TextList(v) => {
                ToSqlOutput::from(serde_json::Value::from(v.as_slice()).to_string())
            }
        })
    }
}

impl QParam {
    /// The value as the postgres client binds it (i64 to BIGINT, String to TEXT, a list to
    /// `text[]`).
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            QParam::Int(n) => n,
            QParam::Text(s) => s,
            QParam::TextList(v) => v,
        }
    }
}

/// WHERE conditions and their parameters, written for one dialect: the placeholders of
/// PostgreSQL are numbered, so the filter counts them.
struct Filter {
    dialect: Dialect,
    conds: Vec<String>,
    params: Vec<QParam>,
}

impl Filter {
    fn new(dialect: Dialect) -> Filter {
        Filter {
            dialect,
            conds: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Binds `v` and returns its placeholder.
    fn param(&mut self, v: impl Into<QParam>) -> String {
        self.params.push(v.into());
        match self.dialect {
            Dialect::Sqlite => "?".to_string(),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    /// The parameters as the postgres client takes them.
    fn pg_params(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        self.params.iter().map(QParam::pg).collect()
    }

    fn clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }
}

/// A DICOM wildcard value as a SQLite GLOB pattern: `*` and `?` mean the same, `[` and `]`
/// are taken literally.
pub(super) fn glob(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '[' => out.push_str("[[]"),
            ']' => out.push_str("[]]"),
            c => out.push(c),
        }
    }
    out
}

/// A DICOM wildcard value as a PostgreSQL LIKE pattern (default escape `\`): `\`, `%` and
/// A DICOM wildcard value as a PostgreSQL LIKE pattern (default escape `\`): `\`, `%` and
/// `_` of the value are escaped so that they match only themselves, `*` becomes `%` and `?`
/// `_`. On a `COLLATE "C"` column LIKE is case-sensitive and compares bytes, as GLOB does; `_`
/// is one character, as GLOB's `?` (the databases are UTF8).
pub(super) fn like(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '\\' | '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            '*' => out.push('%'),
            '?' => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// The upper end of a TM range as the latest time it stands for ("1200" is up to
/// 12:00:59.999999), so that stored times of any precision compare as strings.
fn time_upper(t: &str) -> String {
    const LATEST: &str = "235959.999999";
    let t = t.replace(':', "");
    if t.len() < LATEST.len() {
        format!("{t}{}", &LATEST[t.len()..])
    } else {
        t
    }
}

fn time_lower(t: &str) -> String {
    t.replace(':', "")
}

/// The condition of one value of a DA/TM key (single value or range).
fn range_cond(f: &mut Filter, col: &str, value: &str, time: bool) -> Option<String> {
    let (a, b) = range_ends(value)?;
    let lower = |s: &str| if time { time_lower(s) } else { s.to_string() };
    let upper = |s: &str| if time { time_upper(s) } else { s.to_string() };
    Some(match (a, b) {
        (Some(a), Some(b)) if a == b && !value.contains('-') => {
            if time {
                // A single time matches the stored times it stands for.
                let (lo, hi) = (lower(a), upper(a));
                format!("{col} BETWEEN {} AND {}", f.param(lo), f.param(hi))
            } else {
                format!("{col} = {}", f.param(a.to_string()))
            }
        }
        (Some(a), Some(b)) => format!(
            "{col} BETWEEN {} AND {}",
            f.param(lower(a)),
            f.param(upper(b))
        ),
        (Some(a), None) => format!("{col} >= {}", f.param(lower(a))),
        (None, Some(b)) => format!("{col} <= {}", f.param(upper(b))),
        (None, None) => return None,
    })
}

/// The condition of a text value: single value or wildcard.
fn text_cond(f: &mut Filter, col: &str, value: &str) -> String {
    if value.contains(['*', '?']) {
        match f.dialect {
            Dialect::Sqlite => format!("{col} GLOB {}", f.param(glob(value))),
            Dialect::Postgres => format!("{col} LIKE {}", f.param(like(value))),
        }
    } else {
        format!("{col} = {}", f.param(value.to_string()))
    }
}

/// `col IN (...)` for a list of plain values.
fn list_cond(f: &mut Filter, col: &str, values: &[&str]) -> String {
    if values.len() == 1 {
        return format!("{col} = {}", f.param(values[0].to_string()));
    }
    if values.len() <= INLINE_LIST {
        let marks: Vec<String> = values.iter().map(|v| f.param(v.to_string())).collect();
        return format!("{col} IN ({})", marks.join(","));
    }
    let list = QParam::TextList(values.iter().map(|v| v.to_string()).collect());
    match f.dialect {
        Dialect::Sqlite => format!("{col} IN (SELECT value FROM json_each({}))", f.param(list)),
        Dialect::Postgres => format!("{col} = ANY({}::text[])", f.param(list)),
    }
}

/// Date and time keys of one module that are both ranges match as one date-time range
/// (PS3.4 C.2.2.2.5.1). Returns whether it added the condition.
fn combined_date_time(f: &mut Filter, date: &Key, time: &Key, dcol: &str, tcol: &str) -> bool {
    let (Some(d), Some(t)) = (date.text(), time.text()) else {
        return false;
    };
    if !d.contains('-') || !t.contains('-') || d.contains('\\') || t.contains('\\') {
        return false;
    }
    let (Some((d1, d2)), Some((t1, t2))) = (range_ends(d), range_ends(t)) else {
        return false;
    };
    let mut parts = Vec::new();
    // (date end, time end, strictly inside, at the end, time bound)
    let ends = [
        (d1, t1, ">", ">=", t1.map(time_lower)),
        (d2, t2, "<", "<=", t2.map(time_upper)),
    ];
    for (d, t, inside, at, bound) in ends {
        let Some(d) = d else { continue };
        // The plain bound lets the date index narrow the rows first.
        parts.push(format!("{dcol} {at} {}", f.param(d.to_string())));
        if let (Some(_), Some(bound)) = (t, bound) {
            let (p1, p2, p3) = (
                f.param(d.to_string()),
                f.param(d.to_string()),
                f.param(bound),
            );
            parts.push(format!(
                "({dcol} {inside} {p1} OR ({dcol} = {p2} AND {tcol} {at} {p3}))"
            ));
        }
    }
    f.conds.extend(parts);
    true
}

/// Adds the conditions of the keys that select rows.
fn filter(query: &Query, retrieve: bool, dialect: Dialect) -> Filter {
    let mut f = Filter::new(dialect);
    let key = |tag| query.keys.iter().find(|k| k.tag == tag);
    let mut combined = Vec::new();
    for (dt, tt, dcol, tcol) in [
        (
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            "st.study_date",
            "st.study_time",
        ),
        (
            tags::SERIES_DATE,
            tags::SERIES_TIME,
            "se.series_date",
            "se.series_time",
        ),
    ] {
        if let (Some(d), Some(t)) = (key(dt), key(tt))
            && combined_date_time(&mut f, d, t, dcol, tcol)
        {
            combined.extend([dt, tt]);
        }
    }
    for key in &query.keys {
        let (Some(attr), Some(text)) = (key.attr, key.text()) else {
            continue;
        };
        if combined.contains(&key.tag) {
            continue;
        }
        // A retrieve selects by its unique keys only (C.4.2.2.1); other keys are ignored.
        if retrieve && !is_unique_key(key) {
            continue;
        }
        let values: Vec<&str> = if matches!(key.vr, VR::ST | VR::LT | VR::UT) {
            vec![text]
        } else {
            text.split('\\')
                .map(|v| v.trim_matches([' ', '\0']))
                .collect()
        };
        let col = attr.sql;
        let cond = match attr.matching {
            Matching::Uid => Some(list_cond(&mut f, col, &values)),
            Matching::Text if !values.iter().any(|v| v.contains(['*', '?'])) => {
                Some(list_cond(&mut f, col, &values))
            }
            Matching::Text => any(values.iter().map(|v| text_cond(&mut f, col, v)).collect()),
            Matching::Date | Matching::Time => {
                let time = attr.matching == Matching::Time;
                let conds: Option<Vec<String>> = values
                    .iter()
                    .map(|v| range_cond(&mut f, col, v, time))
                    .collect();
                // `-` alone or an unusable value: no condition (checked at parse).
                conds.and_then(any)
            }
            Matching::Int => {
                let conds = values
                    .iter()
                    .filter_map(|v| v.trim().parse::<i64>().ok())
                    .map(|n| format!("{col} = {}", f.param(n)))
                    .collect();
                any(conds)
            }
            Matching::ModalitiesInStudy => {
                let conds = values
                    .iter()
                    .map(|v| text_cond(&mut f, "y.modality", v))
                    .collect();
                any(conds).map(|c| {
                    format!(
                        "EXISTS (SELECT 1 FROM series y WHERE y.study_uid = st.study_uid AND {c})"
                    )
                })
            }
            Matching::ReturnOnly => None,
        };
        f.conds.extend(cond);
    }
    f
}

fn any(conds: Vec<String>) -> Option<String> {
    match conds.len() {
        0 => None,
        1 => conds.into_iter().next(),
        _ => Some(format!("({})", conds.join(" OR "))),
    }
}

fn is_unique_key(key: &Key) -> bool {
    [
        tags::PATIENT_ID,
        tags::ISSUER_OF_PATIENT_ID,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
    ]
    .contains(&key.tag)
}

/// The SELECT of a C-FIND (without its LIMIT), its filter, and the keys whose values it selects
/// in column order.
fn find_statement(query: &Query, dialect: Dialect) -> (String, Filter, Vec<&Key>) {
    let f = filter(query, false, dialect);
    let selected: Vec<&Key> = query
        .keys
        .iter()
        .filter(|k| k.attr.is_some() && k.value != KeyValue::Sequence)
        .collect();
    let columns: Vec<&str> = selected
        .iter()
        .filter_map(|k| k.attr.map(|a| a.sql))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}{}",
        if columns.is_empty() {
            "1".to_string()
        } else {
            columns.join(", ")
        },
        from_clause(query.level),
        f.clause()
    );
    (sql, f, selected)
}

/// The transfer syntax of the responses, refused when unknown.
fn response_ts(ts_uid: &str) -> Result<&'static dicom_encoding::TransferSyntax, QueryError> {
    let ts_uid = ts_uid.trim_end_matches(['\0', ' ']);
    TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| QueryError::TransferSyntax(crate::net::Printable(ts_uid).to_string()))
}

/// The C-FIND statement with its LIMIT (one more than `limit`, to tell truncation).
fn limited_find_statement(
    query: &Query,
    limit: usize,
    dialect: Dialect,
) -> (String, Filter, Vec<&Key>) {
    let (mut sql, mut f, selected) = find_statement(query, dialect);
    if limit > 0 {
        let mark = f.param(limit as i64 + 1);
        sql.push_str(&format!(" LIMIT {mark}"));
    }
    (sql, f, selected)
}

pub(super) fn find(
    query: &Query,
    conn: &rusqlite::Connection,
    limit: usize,
    ts_uid: &str,
) -> Result<Found, QueryError> {
    let ts = response_ts(ts_uid)?;
    let span = tracing::debug_span!("c_find", level = %query.level, limit);
    let _enter = span.enter();

    let (sql, f, selected) = limited_find_statement(query, limit, Dialect::Sqlite);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(f.params.iter()))?;
    let mut matches = Vec::new();
    let mut truncated = false;
    while let Some(row) = rows.next()? {
        if limit > 0 && matches.len() == limit {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(selected.len());
        for i in 0..selected.len() {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => None,
                ValueRef::Integer(n) => Some(n.to_string()),
                ValueRef::Real(x) => Some(x.to_string()),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Some(String::from_utf8_lossy(t).into_owned())
                }
            });
        }
        matches.push(encode_response(query, &selected, values, ts)?);
    }
    tracing::debug!(matches = matches.len(), truncated, "C-FIND matched");
    Ok(Found { matches, truncated })
}

/// [`find`] on PostgreSQL: the same statement in its dialect, the same responses.
pub(super) fn find_pg(
    query: &Query,
    client: &mut postgres::Client,
    limit: usize,
    ts_uid: &str,
) -> Result<Found, QueryError> {
    let ts = response_ts(ts_uid)?;
    let span = tracing::debug_span!("c_find", level = %query.level, limit);
    let _enter = span.enter();

    let (sql, f, selected) = limited_find_statement(query, limit, Dialect::Postgres);
    let rows = client.query(sql.as_str(), &f.pg_params())?;
    let truncated = limit > 0 && rows.len() > limit;
    let mut matches = Vec::with_capacity(rows.len().min(limit.max(1)));
    for row in rows.iter().take(if limit > 0 { limit } else { usize::MAX }) {
        let mut values = Vec::with_capacity(selected.len());
        for i in 0..selected.len() {
            values.push(pg_text(row, i)?);
        }
        matches.push(encode_response(query, &selected, values, ts)?);
    }
    tracing::debug!(matches = matches.len(), truncated, "C-FIND matched");
    Ok(Found { matches, truncated })
}

/// Column `i` of a PostgreSQL row as the text SQLite's dynamic values give (integers and
/// reals in Rust's formatting), read by the column's declared type: PostgreSQL has no
/// dynamic value to ask.
fn pg_text(row: &postgres::Row, i: usize) -> Result<Option<String>, postgres::Error> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_();
    Ok(if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)?.map(|n| n.to_string())
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)?.map(|n| n.to_string())
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)?.map(|n| n.to_string())
    } else if *ty == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(i)?.map(|x| x.to_string())
    } else if *ty == Type::FLOAT4 {
        row.try_get::<_, Option<f32>>(i)?
            .map(|x| f64::from(x).to_string())
    } else {
        // TEXT and its kin; any other type fails here as a typed WrongType error.
        row.try_get::<_, Option<String>>(i)?
    })
}

/// One response identifier: every key of the query, with the row's values where the index
/// has them.
fn encode_response(
    query: &Query,
    selected: &[&Key],
    values: Vec<Option<String>>,
    ts: &dicom_encoding::TransferSyntax,
) -> Result<Vec<u8>, QueryError> {
    let value_of = |key: &Key| -> Option<&str> {
        if key.tag == tags::QUERY_RETRIEVE_LEVEL {
            return Some(query.level.code());
        }
        selected
            .iter()
            .position(|s| s.tag == key.tag)
            .and_then(|i| values[i].as_deref())
    };
    // The query's set when every text fits it, else UTF-8.
    let mut utf8 = false;
    let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(query.keys.len());
    for key in &query.keys {
        let bytes = match value_of(key) {
            None => None,
            Some(v) if CHARSET_VRS.contains(&key.vr) => match query.charset.encode(v) {
                Some(b) => Some(b),
                None => {
                    utf8 = true;
                    Some(v.as_bytes().to_vec())
                }
            },
            Some(v) => Some(v.as_bytes().to_vec()),
        };
        encoded.push(bytes);
    }
    if utf8 {
        // Re-encode every text in UTF-8, so that the response is in one set.
        for (key, slot) in query.keys.iter().zip(encoded.iter_mut()) {
            if CHARSET_VRS.contains(&key.vr)
                && let Some(v) = value_of(key)
            {
                *slot = Some(v.as_bytes().to_vec());
            }
        }
    }

    let mut obj = InMemDicomObject::new_empty();
    let charset = if utf8 {
        Some("ISO_IR 192".to_string())
    } else if !query.charset.is_default() {
        Some(query.charset.value())
    } else {
        None
    };
    if let Some(cs) = charset {
        obj.put(DataElement::new(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            PrimitiveValue::from(cs),
        ));
    }
    for (key, bytes) in query.keys.iter().zip(encoded) {
        let element = match (&key.value, bytes) {
            (KeyValue::Sequence, _) => DataElement::new(
                key.tag,
                VR::SQ,
                DataSetSequence::<InMemDicomObject>::empty(),
            ),
            // Text of the query's character set goes as its bytes; the other VRs are ASCII,
            // and dicom-object writes their values only from text.
            (_, Some(b)) if !b.is_empty() && CHARSET_VRS.contains(&key.vr) => DataElement::new(
                key.tag,
                key.vr,
                PrimitiveValue::U8(padded(b, key.vr).into()),
            ),
            (_, Some(b)) if !b.is_empty() => DataElement::new(
                key.tag,
                key.vr,
                PrimitiveValue::from(String::from_utf8_lossy(&b).into_owned()),
            ),
            _ => DataElement::new(key.tag, key.vr, PrimitiveValue::Empty),
        };
        obj.put(element);
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| QueryError::Encode(e.to_string()))?;
    Ok(out)
}

/// Values have even length: UIDs are padded with NUL, text with a space.
fn padded(mut b: Vec<u8>, vr: VR) -> Vec<u8> {
    if b.len() % 2 == 1 {
        b.push(if vr == VR::UI { 0 } else { b' ' });
    }
    b
}

/// The statement of a retrieve: the instances in study/series/instance-number order, NULL
/// instance numbers first on both engines (SQLite's default; PostgreSQL's needs saying).
fn instances_statement(query: &Query, dialect: Dialect) -> (String, Filter) {
    let f = filter(query, query.service != Service::Find, dialect);
    let nulls = match dialect {
        Dialect::Sqlite => "",
        Dialect::Postgres => " NULLS FIRST",
    };
    let sql = format!(
        "SELECT i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax, i.path FROM {}{} \
         ORDER BY i.study_instance_uid, i.series_instance_uid, i.instance_number{nulls}, \
         i.sop_instance_uid",
        from_clause(Level::Image),
        f.clause()
    );
    (sql, f)
}

pub(super) fn instances(
    query: &Query,
    conn: &rusqlite::Connection,
) -> Result<Vec<InstanceRef>, QueryError> {
    let span = tracing::debug_span!("retrieve", level = %query.level);
    let _enter = span.enter();
    let (sql, f) = instances_statement(query, Dialect::Sqlite);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(f.params.iter()), |r| {
        Ok(InstanceRef {
            sop_class_uid: r.get(0)?,
            sop_instance_uid: r.get(1)?,
            transfer_syntax: r.get(2)?,
            path: r.get(3)?,
        })
    })?;
    let found = rows.collect::<Result<Vec<_>, _>>()?;
    tracing::debug!(instances = found.len(), "retrieve resolved");
    Ok(found)
}

/// [`instances`] on PostgreSQL: the same instances in the same order.
pub(super) fn instances_pg(
    query: &Query,
    client: &mut postgres::Client,
) -> Result<Vec<InstanceRef>, QueryError> {
    let span = tracing::debug_span!("retrieve", level = %query.level);
    let _enter = span.enter();
    let (sql, f) = instances_statement(query, Dialect::Postgres);
    let found = client
        .query(sql.as_str(), &f.pg_params())?
        .iter()
        .map(|r| {
            Ok(InstanceRef {
                sop_class_uid: r.try_get(0)?,
                sop_instance_uid: r.try_get(1)?,
                transfer_syntax: r.try_get(2)?,
                path: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()?;
    tracing::debug!(instances = found.len(), "retrieve resolved");
    Ok(found)
}

/// The SQLite plan of the statement `find` runs (EXPLAIN QUERY PLAN), one line per step.
pub(super) fn explain(
    query: &Query,
    conn: &rusqlite::Connection,
) -> Result<Vec<String>, QueryError> {
    let (sql, f, _) = find_statement(query, Dialect::Sqlite);
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(f.params.iter()), |r| {
        r.get::<_, String>(3)
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
