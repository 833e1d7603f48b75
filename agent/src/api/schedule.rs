//! Schedules: ISO 8601 times as Patroni accepts them (`scheduled_at`, `schedule`, `--scheduled`),
//! and the one restart a member may have scheduled (`POST /restart {"schedule": ...}`), published
//! in its member key as `scheduled_restart` and carried out by [`run_scheduler`] when due.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use praetor_dcs::Role;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a time could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// Not an ISO 8601 date-time.
    Unparsable,
    /// No UTC offset (Patroni requires one).
    NoTimezone,
}

/// Parses an ISO 8601 date-time the way Patroni's dateutil does for the usual forms:
/// `2026-11-24T10:00:00+00:00`, `2026-11-24 10:00+01:00`, `2026-11-24T10:00:00.5Z`,
/// `2026-11-24T10:00:00+0100`, `...+01`.
pub fn parse_iso8601(s: &str) -> Result<OffsetDateTime, TimeError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let (date, rest) = s.split_once(['T', 't', ' ']).ok_or(TimeError::Unparsable)?;
    let rest = rest.trim();
    let tz_at = rest.find(['+', '-', 'Z', 'z']).unwrap_or(rest.len());
    let (clock, tz) = rest.split_at(tz_at);
    let tz = tz.trim();
    if tz.is_empty() {
        let _ = time::PrimitiveDateTime::parse(
            &format!("{date}T{}", normalize_clock(clock)?),
            &time::format_description::well_known::Iso8601::DEFAULT,
        )
        .map_err(|_| TimeError::Unparsable)?;
        return Err(TimeError::NoTimezone);
    }
    let tz = if tz.eq_ignore_ascii_case("z") {
        "Z".to_string()
    } else {
        let (sign, digits) = tz.split_at(1);
        let digits: String = digits.chars().filter(|c| *c != ':').collect();
        match digits.len() {
            2 => format!("{sign}{digits}:00"),
            4 => format!("{sign}{}:{}", &digits[..2], &digits[2..]),
            _ => return Err(TimeError::Unparsable),
        }
    };
    let text = format!("{date}T{}{tz}", normalize_clock(clock)?);
    OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| TimeError::Unparsable)
}

/// `HH:MM` → `HH:MM:00`; `HH:MM:SS[.f]` kept.
fn normalize_clock(clock: &str) -> Result<String, TimeError> {
    let parts: Vec<&str> = clock.trim().split(':').collect();
    match parts.len() {
        2 => Ok(format!("{}:{}:00", parts[0], parts[1])),
        3 => Ok(clock.trim().to_string()),
        _ => Err(TimeError::Unparsable),
    }
}

/// An ISO 8601 time as Patroni writes it (`2026-11-24T10:00:00+00:00`).
pub fn format_iso(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .map(|s| s.replace('Z', "+00:00"))
        .unwrap_or_default()
}

/// Patroni's `parse_schedule`: the time, or the status code and message (400 unparsable or without
/// a time zone, 422 in the past).
pub fn parse_schedule(
    s: &str,
    action: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, (StatusCode, String)> {
    match parse_iso8601(s) {
        Ok(t) if t < now => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Cannot schedule {action} in the past"),
        )),
        Ok(t) => Ok(t),
        Err(TimeError::NoTimezone) => Err((
            StatusCode::BAD_REQUEST,
            format!("Timezone information is mandatory for the scheduled {action}"),
        )),
        Err(TimeError::Unparsable) => Err((
            StatusCode::BAD_REQUEST,
            format!("Unable to parse scheduled timestamp ({s}). It should be in ISO 8601 format."),
        )),
    }
}

/// The conditions of `POST /restart` (Patroni's restart filters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartFilter {
    /// Only when a restart is pending.
    pub restart_pending: bool,
    /// Only in this role.
    pub role: Option<Role>,
    /// Only when the running server is older than this (`server_version_num`).
    pub postgres_version: Option<i32>,
    /// Give up waiting for the restart after this many seconds.
    pub timeout: Option<u64>,
}

/// A restart scheduled for later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRestart {
    /// When.
    pub at: OffsetDateTime,
    /// Its conditions, checked when due.
    pub filter: RestartFilter,
    /// The postmaster start time when it was scheduled.
    pub postmaster_start_time: Option<String>,
}

impl ScheduledRestart {
    /// The member key's `scheduled_restart` value (Patroni's fields).
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "schedule": format_iso(self.at) });
        if self.filter.restart_pending {
            v["restart_pending"] = json!(true);
        }
        if let Some(r) = self.filter.role {
            v["role"] = json!(r.to_string());
        }
        if let Some(p) = self.filter.postgres_version {
            v["postgres_version"] = json!(p);
        }
        if let Some(t) = &self.postmaster_start_time {
            v["postmaster_start_time"] = json!(t);
        }
        v
    }
}

/// The member's scheduled restart, shared by the API (which sets and deletes it), the loop (which
/// publishes it) and [`run_scheduler`] (which carries it out).
#[derive(Debug, Default)]
pub struct RestartSchedule {
    slot: Mutex<Option<ScheduledRestart>>,
    changed: Notify,
}

impl RestartSchedule {
    /// The scheduled restart, if any.
    pub fn get(&self) -> Option<ScheduledRestart> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Schedules `r`; `false` when another restart is already scheduled.
    pub fn set(&self, r: ScheduledRestart) -> bool {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(r);
        drop(slot);
        self.changed.notify_one();
        true
    }

    /// Deletes the scheduled restart; `false` when there was none.
    pub fn clear(&self) -> bool {
        let had = self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        self.changed.notify_one();
        had
    }

    /// Takes the scheduled restart if it is due at `now`.
    pub fn take_due(&self, now: OffsetDateTime) -> Option<ScheduledRestart> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|r| r.at <= now) {
            slot.take()
        } else {
            None
        }
    }

    /// The value to publish as `scheduled_restart` in the member key.
    pub fn member_value(&self) -> Option<Value> {
        self.get().map(|r| r.to_json())
    }
}

/// Carries out the scheduled restart when due (through the same path as `POST /restart`), until
/// `shutdown`.
pub async fn run_scheduler(ctx: super::ApiContext, shutdown: CancellationToken) {
    loop {
        let wait = match ctx.restarts.get() {
            Some(r) => {
                let secs = (r.at - OffsetDateTime::now_utc()).as_seconds_f64();
                Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ctx.restarts.changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(r) = ctx.restarts.take_due(OffsetDateTime::now_utc()) else {
            continue;
        };
        let (code, msg) = super::actions::perform_restart(&ctx, &r.filter).await;
        if code.is_success() {
            tracing::info!("scheduled restart: {msg}");
        } else {
            tracing::warn!("scheduled restart not done: {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_forms_patroni_accepts() {
        let want = OffsetDateTime::parse("2030-01-02T03:04:00+00:00", &Rfc3339).unwrap();
        for s in [
            "2030-01-02T03:04:00+00:00",
            "2030-01-02T03:04+00:00",
            "2030-01-02 03:04:00Z",
            "2030-01-02T03:04:00+0000",
            "2030-01-02T03:04:00+00",
            "2030-01-02T05:04:00+02:00",
            "2030-01-01T22:04:00-05:00",
        ] {
            assert_eq!(parse_iso8601(s), Ok(want), "{s}");
        }
        assert_eq!(
            parse_iso8601("2030-01-02T03:04:00"),
            Err(TimeError::NoTimezone)
        );
        assert_eq!(parse_iso8601("tomorrow"), Err(TimeError::Unparsable));
        assert_eq!(
            parse_iso8601("2030-13-45T03:04:00Z"),
            Err(TimeError::Unparsable)
        );
        assert_eq!(format_iso(want), "2030-01-02T03:04:00+00:00");
    }

    #[test]
    fn schedule_codes() {
        let now = OffsetDateTime::parse("2030-01-02T03:04:00Z", &Rfc3339).unwrap();
        assert!(parse_schedule("2030-01-02T04:00:00Z", "switchover", now).is_ok());
        let (code, msg) = parse_schedule("2020-01-02T04:00:00Z", "switchover", now).unwrap_err();
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(msg, "Cannot schedule switchover in the past");
        let (code, msg) = parse_schedule("2031-01-02T04:00:00", "restart", now).unwrap_err();
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(msg.contains("Timezone information is mandatory"), "{msg}");
        assert_eq!(
            parse_schedule("x", "restart", now).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn one_restart_at_a_time() {
        let s = RestartSchedule::default();
        let at = OffsetDateTime::parse("2030-01-02T03:04:00Z", &Rfc3339).unwrap();
        let r = ScheduledRestart {
            at,
            filter: RestartFilter::default(),
            postmaster_start_time: None,
        };
        assert!(s.set(r.clone()));
        assert!(!s.set(r.clone()), "another restart is already scheduled");
        assert_eq!(
            s.member_value().unwrap()["schedule"],
            "2030-01-02T03:04:00+00:00"
        );
        assert_eq!(s.take_due(at - time::Duration::seconds(1)), None);
        assert_eq!(s.take_due(at), Some(r));
        assert!(!s.clear());
    }
}
