//! The VirusTotal results dataset on PostgreSQL (`crate::vt_reports` on SQLite): the same
//! upsert, where a report replaces the stored one only if fetched no earlier.

use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgDatabase;
use crate::StoreError;
use crate::vt_reports::VtReportRow;

const UPSERT: &str = "INSERT INTO vt_reports
        (sha256, last_analysis_date, fetched_at, malicious, suspicious, undetected, harmless, report_json)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (sha256) DO UPDATE SET
        last_analysis_date = excluded.last_analysis_date, fetched_at = excluded.fetched_at,
        malicious = excluded.malicious, suspicious = excluded.suspicious,
        undetected = excluded.undetected, harmless = excluded.harmless,
        report_json = excluded.report_json
    WHERE excluded.fetched_at >= vt_reports.fetched_at";

const SELECT: &str = "SELECT sha256, last_analysis_date, fetched_at, malicious, suspicious, undetected, harmless, \
     report_json FROM vt_reports";

/// Stores each report (already validated) in one transaction; returns which were stored.
pub(crate) fn put(database: &PgDatabase, reports: Vec<VtReportRow>) -> Result<Vec<bool>, StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(UPSERT).await?;
        let mut stored = Vec::with_capacity(reports.len());
        for report in &reports {
            let counts =
                [report.malicious, report.suspicious, report.undetected, report.harmless].map(i64::from);
            let parameters: [&(dyn ToSql + Sync); 8] = [
                &report.sha256,
                &report.last_analysis_date,
                &report.fetched_at,
                &counts[0],
                &counts[1],
                &counts[2],
                &counts[3],
                &report.report_json,
            ];
            stored.push(transaction.execute(&statement, &parameters).await? == 1);
        }
        transaction.commit().await?;
        Ok(stored)
    })
}

/// The stored report on a (normalised) hash.
pub(crate) fn get(database: &PgDatabase, sha256: String) -> Result<Option<VtReportRow>, StoreError> {
    database.run(move |client| async move {
        let statement = client.prepare_cached(&format!("{SELECT} WHERE sha256 = $1")).await?;
        client.query_opt(&statement, &[&sha256]).await?.map(|row| report(&row)).transpose()
    })
}

/// Up to `limit` reports in hash order, after the hash `after`: the export reads the dataset a
/// page at a time, so its memory does not grow with the dataset.
pub(crate) fn page(
    database: &PgDatabase,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<VtReportRow>, StoreError> {
    database.run(move |client: Object| async move {
        let statement = client
            .prepare_cached(&format!(
                "{SELECT} WHERE $1::TEXT IS NULL OR sha256 > $1 ORDER BY sha256 LIMIT $2"
            ))
            .await?;
        let rows = client.query(&statement, &[&after, &limit]).await?;
        rows.iter().map(report).collect()
    })
}

fn report(row: &Row) -> Result<VtReportRow, StoreError> {
    let count = |index: usize| {
        let value: i64 = row.try_get(index)?;
        u32::try_from(value)
            .map_err(|_| StoreError::InvalidVtReport(format!("engine count {value} out of range")))
    };
    Ok(VtReportRow {
        sha256: row.try_get(0)?,
        last_analysis_date: row.try_get(1)?,
        fetched_at: row.try_get(2)?,
        malicious: count(3)?,
        suspicious: count(4)?,
        undetected: count(5)?,
        harmless: count(6)?,
        report_json: row.try_get(7)?,
    })
}
