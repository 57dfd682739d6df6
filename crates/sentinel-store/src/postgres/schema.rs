//! The malware tables on PostgreSQL: the same tables, columns and constraints as `sentinel.db`
//! (`crate::migrations::MALWARE`, documented in docs/storage.md), in PostgreSQL's types:
//! `BIGINT` for SQLite's integers (unix seconds, counts, ids), `DOUBLE PRECISION` for its
//! reals, `BYTEA` for its blobs, identity columns for its autoincrement keys (never reused).
//! JSON columns stay `TEXT` holding valid JSON, checked by the store before it writes, so the
//! text a caller stored is the text it reads back.
//!
//! Migration 1 is the whole schema as it stands when PostgreSQL support began; later ones are
//! appended, never edited once released.

use super::PgSchema;

pub(crate) const MALWARE: PgSchema = PgSchema { name: "malware", migrations: MALWARE_MIGRATIONS };

const MALWARE_MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE samples (
        sha256      TEXT   PRIMARY KEY CHECK (length(sha256) = 64),
        size        BIGINT NOT NULL CHECK (size >= 0),
        first_seen  BIGINT NOT NULL,
        last_seen   BIGINT NOT NULL,
        stored_path TEXT
    );
    CREATE INDEX samples_stored_by_last_seen ON samples (last_seen) WHERE stored_path IS NOT NULL;

    CREATE TABLE verdicts (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sha256        TEXT   NOT NULL CHECK (length(sha256) = 64),
        analysis      TEXT   NOT NULL
                      CHECK (analysis IN ('static', 'dynamic', 'virustotal', 'combined', 'list')),
        model_version TEXT   NOT NULL,
        score         DOUBLE PRECISION NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
        created_at    BIGINT NOT NULL,
        client        TEXT   NOT NULL
    );
    CREATE INDEX verdicts_by_sha256 ON verdicts (sha256, id);

    CREATE TABLE vt_reports (
        sha256             TEXT   PRIMARY KEY CHECK (length(sha256) = 64),
        last_analysis_date BIGINT,
        fetched_at         BIGINT NOT NULL,
        malicious          BIGINT NOT NULL CHECK (malicious >= 0),
        suspicious         BIGINT NOT NULL CHECK (suspicious >= 0),
        undetected         BIGINT NOT NULL CHECK (undetected >= 0),
        harmless           BIGINT NOT NULL CHECK (harmless >= 0),
        engines            BIGINT GENERATED ALWAYS AS (malicious + suspicious + undetected + harmless) STORED,
        report_json        TEXT   NOT NULL
    );

    CREATE TABLE labels (
        sha256      TEXT   PRIMARY KEY CHECK (length(sha256) = 64),
        y           BIGINT NOT NULL CHECK (y IN (0, 1)),
        source      TEXT   NOT NULL CHECK (source IN ('virustotal', 'manual', 'import')),
        labelled_at BIGINT NOT NULL,
        note        TEXT
    );

    CREATE TABLE model_versions (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind        TEXT   NOT NULL CHECK (kind IN ('static', 'behaviour', 'network')),
        label       TEXT   NOT NULL,
        created_at  BIGINT NOT NULL,
        trainer     TEXT   NOT NULL,
        command     TEXT   NOT NULL,
        data        TEXT   NOT NULL,
        sha256      TEXT   NOT NULL CHECK (length(sha256) = 64),
        evaluation  TEXT,
        artifact    BYTEA
    );
    CREATE INDEX model_versions_by_kind ON model_versions (kind, id);
    CREATE TABLE model_decisions (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind        TEXT   NOT NULL,
        decided_at  BIGINT NOT NULL,
        outcome     TEXT   NOT NULL CHECK (outcome IN ('promoted', 'rejected', 'activated')),
        version_id  BIGINT NOT NULL REFERENCES model_versions (id),
        previous_id BIGINT REFERENCES model_versions (id),
        reason      TEXT   NOT NULL,
        figures     TEXT   NOT NULL
    );
    CREATE INDEX model_decisions_by_kind ON model_decisions (kind, id);
    CREATE TABLE active_models (
        kind         TEXT   PRIMARY KEY,
        version_id   BIGINT NOT NULL REFERENCES model_versions (id),
        activated_at BIGINT NOT NULL
    );

    CREATE TABLE api_tokens (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name       TEXT   NOT NULL UNIQUE,
        hash       BYTEA  NOT NULL UNIQUE CHECK (length(hash) = 32),
        scopes     TEXT   NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        last_used  BIGINT,
        revoked_at BIGINT
    );

    CREATE TABLE audit_events (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time      BIGINT NOT NULL,
        principal TEXT   NOT NULL,
        action    TEXT   NOT NULL,
        target    TEXT,
        outcome   TEXT   NOT NULL,
        details   TEXT   NOT NULL,
        client    TEXT
    );
    CREATE INDEX audit_events_by_action ON audit_events (action, id);

    CREATE TABLE hash_lists (
        sha256   TEXT   PRIMARY KEY CHECK (length(sha256) = 64),
        list     TEXT   NOT NULL CHECK (list IN ('safe', 'bad')),
        reason   TEXT   NOT NULL,
        source   TEXT   NOT NULL,
        added_at BIGINT NOT NULL,
        added_by TEXT   NOT NULL
    );
    CREATE INDEX hash_lists_by_list ON hash_lists (list, sha256);

    CREATE TABLE yara_matches (
        sha256     TEXT   NOT NULL,
        ruleset    TEXT   NOT NULL,
        namespace  TEXT   NOT NULL,
        rule       TEXT   NOT NULL,
        tags       TEXT   NOT NULL,
        metadata   TEXT   NOT NULL,
        matched_at BIGINT NOT NULL,
        PRIMARY KEY (sha256, ruleset, namespace, rule)
    );

    CREATE TABLE alerts (
        id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rule                 TEXT   NOT NULL,
        key                  TEXT   NOT NULL,
        severity             TEXT   NOT NULL,
        summary              TEXT   NOT NULL,
        details              TEXT   NOT NULL,
        raised_at            BIGINT NOT NULL,
        last_raised_at       BIGINT NOT NULL,
        repeats              BIGINT NOT NULL DEFAULT 0,
        acknowledged_at      BIGINT,
        acknowledged_by      TEXT,
        acknowledgement_note TEXT
    );
    CREATE INDEX alerts_by_rule_key ON alerts (rule, key, id);
    CREATE TABLE alert_deliveries (
        alert_id        BIGINT NOT NULL REFERENCES alerts (id),
        channel         TEXT   NOT NULL,
        state           TEXT   NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT,
        last_error      TEXT,
        delivered_at    BIGINT,
        PRIMARY KEY (alert_id, channel)
    );
    CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt_at);
",
    // 2: named leases (`crate::leases`): which owner holds each, until when.
    "
    CREATE TABLE leases (
        name       TEXT   PRIMARY KEY,
        owner      TEXT   NOT NULL,
        expires_at BIGINT NOT NULL
    );
",
    // 3: the shared VirusTotal economy (`crate::vt_economy`): flight claims across replicas,
    // and each key's usage and reserved slots.
    "
    CREATE TABLE vt_flight_claims (
        sha256        TEXT    PRIMARY KEY CHECK (length(sha256) = 64),
        owner         TEXT    NOT NULL,
        expires_at_ms BIGINT  NOT NULL,
        released      BOOLEAN NOT NULL,
        outcome       TEXT
    );
    CREATE INDEX vt_flight_claims_by_expiry ON vt_flight_claims (expires_at_ms);
    CREATE TABLE vt_key_usage (
        key_id        TEXT   PRIMARY KEY CHECK (length(key_id) = 64),
        day           BIGINT NOT NULL,
        used_today    BIGINT NOT NULL CHECK (used_today >= 0),
        held_until_ms BIGINT NOT NULL
    );
    CREATE INDEX vt_key_usage_by_day ON vt_key_usage (day);
    CREATE TABLE vt_key_slots (
        id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_id TEXT   NOT NULL,
        at_ms  BIGINT NOT NULL
    );
    CREATE INDEX vt_key_slots_by_key ON vt_key_slots (key_id, at_ms);
",
];
