//! `switchover` and `failover`, as patronictl's `_do_failover_or_switchover`: check and ask
//! (leader, candidate, when, "Are you sure"), then `POST /switchover` or `/failover` to the leader
//! (or the candidate when there is none), which checks the candidate and writes the `failover` key;
//! if no agent answers, write the key directly. A refusal prints the agent's reason and fails.

use anyhow::{anyhow, bail};
use praetor_agent::api::schedule::{format_iso, parse_iso8601, TimeError};
use praetor_dcs::{Expect, Failover};
use serde_json::json;

use super::{confirm, prompt, render, timestamp, Ctx};

/// Which command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `switchover`.
    Switchover,
    /// `failover`.
    Failover,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::Switchover => "Switchover",
            Kind::Failover => "Failover",
        }
    }
}

/// Parses `--scheduled` like patronictl: `now` or empty → now; a time without an offset is UTC.
pub fn parse_scheduled(s: Option<&str>) -> anyhow::Result<Option<time::OffsetDateTime>> {
    let s = match s.map(str::trim) {
        None | Some("") | Some("now") => return Ok(None),
        Some(s) => s,
    };
    match parse_iso8601(s) {
        Ok(t) => Ok(Some(t)),
        Err(TimeError::NoTimezone) => parse_iso8601(&format!("{s}+00:00"))
            .map(Some)
            .map_err(|_| anyhow!("Unable to parse scheduled timestamp ({s}). It should be in an unambiguous format (e.g. ISO 8601)")),
        Err(TimeError::Unparsable) => bail!(
            "Unable to parse scheduled timestamp ({s}). It should be in an unambiguous format (e.g. ISO 8601)"
        ),
    }
}

/// Runs `switchover` or `failover`.
pub async fn run(
    ctx: &Ctx,
    kind: Kind,
    leader_arg: Option<String>,
    candidate_arg: Option<String>,
    scheduled: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let scope = &ctx.scope;
    let cluster = ctx.cluster().await?;
    let current = cluster.leader.as_ref().map(|l| l.name.clone());
    let mut kind = kind;
    if kind == Kind::Failover && leader_arg.is_some() {
        eprintln!("Warning: failover with --leader is a switchover; performing a switchover");
        kind = Kind::Switchover;
    }
    let leader = match kind {
        Kind::Switchover => {
            let current = current
                .clone()
                .ok_or_else(|| anyhow!("This cluster has no leader"))?;
            let given = match leader_arg {
                Some(l) => l,
                None if force => current.clone(),
                None => prompt("Primary", Some(&current))?,
            };
            if given != current {
                bail!("Member {given} is not the leader of cluster {scope}");
            }
            Some(given)
        }
        Kind::Failover => None,
    };
    let mut candidates: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| Some(&m.name) != current.as_ref())
        .filter(|m| !m.data.tags.nofailover && m.data.tags.failover_priority != Some(0))
        .map(|m| m.name.clone())
        .collect();
    candidates.sort();
    if candidates.is_empty() {
        bail!("No candidates found to {} to", kind.name());
    }
    let candidate = match candidate_arg {
        Some(c) => Some(c),
        None if force => None,
        None => {
            let list = candidates
                .iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let c = prompt(&format!("Candidate [{list}]"), Some(""))?;
            (!c.is_empty()).then_some(c)
        }
    };
    if kind == Kind::Failover && candidate.is_none() {
        bail!("Failover could be performed only to a specific candidate");
    }
    if let Some(c) = &candidate {
        if Some(c) == current.as_ref() {
            bail!("{} target and source are the same.", kind.title());
        }
        if !candidates.contains(c) {
            bail!("Member {c} does not exist in cluster {scope} or is tagged as nofailover");
        }
    }
    let scheduled = match (kind, scheduled) {
        (Kind::Switchover, Some(s)) => Some(s),
        (Kind::Switchover, None) if !force => {
            let example = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
            Some(prompt(
                &format!(
                    "When should the switchover take place (e.g. {} )",
                    example.format(&f).unwrap_or_default()
                ),
                Some("now"),
            )?)
        }
        _ => None,
    };
    let scheduled_at = parse_scheduled(scheduled.as_deref())?;
    if let Some(t) = scheduled_at {
        let paused = cluster
            .config
            .as_ref()
            .is_some_and(|c| c.value["pause"].as_bool() == Some(true));
        if paused {
            bail!("Can't schedule switchover in the paused state");
        }
        if t < time::OffsetDateTime::now_utc() {
            bail!("Can not schedule switchover in the past");
        }
    }
    print!(
        "{}",
        render::render_list(scope, &cluster, render::Format::Pretty, false, false)
    );
    if !force {
        let question = match &current {
            Some(l) => format!(
                "Are you sure you want to {} cluster {scope}, demoting current leader {l}?",
                kind.name()
            ),
            None => format!("Are you sure you want to {} cluster {scope}?", kind.name()),
        };
        if !confirm(&question)? {
            bail!("Aborting {}", kind.name());
        }
    }
    let mut body = json!({});
    if let Some(l) = &leader {
        body["leader"] = json!(l);
    }
    if let Some(c) = &candidate {
        body["candidate"] = json!(c);
    }
    if let Some(t) = scheduled_at {
        body["scheduled_at"] = json!(format_iso(t));
    }
    // The leader's API checks the candidate and writes the key; without a leader, the candidate's.
    let target = current
        .as_deref()
        .or(candidate.as_deref())
        .and_then(|n| cluster.member(n));
    let answer = match target {
        Some(m) => {
            ctx.call(m, "POST", &format!("/{}", kind.name()), Some(&body))
                .await
        }
        None => Err("no member to ask".into()),
    };
    match answer {
        Ok(r) if r.status == 200 || r.status == 202 => {
            println!("{} {}", timestamp(), r.body);
            if r.status == 200 {
                let c = ctx.cluster().await?;
                print!(
                    "{}",
                    render::render_list(scope, &c, render::Format::Pretty, false, false)
                );
            }
            Ok(())
        }
        Ok(r) => bail!("{} failed, details: {}, {}", kind.title(), r.status, r.body),
        Err(e) => {
            eprintln!("{e}");
            println!(
                "{} Could not {} using the REST API, falling back to DCS",
                timestamp(),
                kind.name()
            );
            let value = Failover {
                leader,
                member: candidate,
                scheduled_at: scheduled_at.map(format_iso),
            };
            let expect = match &cluster.failover {
                Some(f) => Expect::Version(f.version),
                None => Expect::Absent,
            };
            ctx.dcs.set_failover(&value, expect).await?;
            println!("{} {} initiated", timestamp(), kind.title());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_forms() {
        assert_eq!(parse_scheduled(None).unwrap(), None);
        assert_eq!(parse_scheduled(Some("now")).unwrap(), None);
        let t = parse_scheduled(Some("2030-01-01T10:00")).unwrap().unwrap();
        assert_eq!(format_iso(t), "2030-01-01T10:00:00+00:00");
        let t = parse_scheduled(Some("2030-01-01T10:00+02:00"))
            .unwrap()
            .unwrap();
        assert_eq!(format_iso(t), "2030-01-01T08:00:00+00:00");
        assert!(parse_scheduled(Some("next tuesday")).is_err());
    }
}
