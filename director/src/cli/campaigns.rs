//! `director group …`, `director campaign …` and `director vehicle set-attribute`: the
//! operator API's groups, campaigns and attributes, as tables or `--json`.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::{Value, json};
use service_runtime::cli::{Exit, failure, table};

use super::{Remote, call, print, text, url_part};
use crate::service::plan::parse_duration_secs;

#[derive(Debug, Subcommand)]
pub(super) enum GroupCommand {
    /// Creates a group: static (--vin) or dynamic (--hardware-id, --installed, --attribute).
    Create {
        #[command(flatten)]
        remote: Remote,
        /// Its name.
        name: String,
        /// A member of a static group (repeat).
        #[arg(long = "vin", conflicts_with_all = ["hardware_ids", "installed", "attributes"])]
        vins: Vec<String>,
        /// Dynamic: vehicles with an ECU of this hardware id (repeat: any of them).
        #[arg(long = "hardware-id")]
        hardware_ids: Vec<String>,
        /// Dynamic: vehicles with an ECU that reports this image installed (repeat: any).
        #[arg(long = "installed")]
        installed: Vec<String>,
        /// Dynamic: vehicles with this attribute, NAME=VALUE (repeat: all of them).
        #[arg(long = "attribute")]
        attributes: Vec<String>,
    },
    /// Lists groups with their member counts.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Shows a group and its members now.
    Show {
        #[command(flatten)]
        remote: Remote,
        /// The group.
        name: String,
    },
    /// Adds vehicles to a static group.
    Add {
        #[command(flatten)]
        remote: Remote,
        /// The group.
        name: String,
        /// Vehicles.
        #[arg(required = true)]
        vins: Vec<String>,
    },
    /// Removes vehicles from a static group.
    Remove {
        #[command(flatten)]
        remote: Remote,
        /// The group.
        name: String,
        /// Vehicles.
        #[arg(required = true)]
        vins: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CampaignCommand {
    /// Creates a campaign (a draft until `campaign start`, or --start).
    Create {
        #[command(flatten)]
        remote: Remote,
        /// Its name.
        name: String,
        /// Image in the Image repository (repeat: one per hardware id).
        #[arg(long = "image", required = true)]
        images: Vec<String>,
        /// The group it targets.
        #[arg(long)]
        group: String,
        /// Waves, cumulative shares of the group or groups: 1%,10%,50%,100% or
        /// group:pilots,100%.
        #[arg(long, value_delimiter = ',', default_value = "100%")]
        waves: Vec<String>,
        /// Pause when more than this share of a wave's vehicles failed.
        #[arg(long, default_value = "5%")]
        max_failure_ratio: String,
        /// Time between a wave's last outcome and the next wave: 0, 90s, 10m, 2h, 1d.
        #[arg(long, default_value = "0", value_parser = parse_duration_secs)]
        soak: u64,
        /// Maintenance window in each vehicle's time zone (its `timezone` attribute, else
        /// UTC), e.g. "mon-fri 01:00-05:00" (repeat). Vehicles are assigned only inside one.
        #[arg(long = "window")]
        windows: Vec<String>,
        /// Vehicles that join the group while the campaign runs join the campaign.
        #[arg(long)]
        join_later: bool,
        /// Time after its start a wave counts as finished although some vehicles have no
        /// outcome (parked, offline): 0 waits for every vehicle.
        #[arg(long, default_value = "7d", value_parser = parse_duration_secs)]
        wave_timeout: u64,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// Lists campaigns, newest first.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Shows a campaign and each wave's progress.
    Show {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
    },
    /// Lists a campaign's vehicles with their wave and outcome.
    Vehicles {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
    },
    /// Starts a draft campaign.
    Start {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
    },
    /// Pauses a campaign: what was not yet delivered is withdrawn until it resumes.
    Pause {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resumes a paused campaign, past the failures of its current wave so far.
    Resume {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
    },
    /// Aborts a campaign: every entry it made is cancelled, as `assignment cancel` does (what
    /// the vehicle may hold is withdrawn from its targets and ends on the ECU's word).
    Abort {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Assigns again the vehicles whose update failed.
    RetryFailed {
        #[command(flatten)]
        remote: Remote,
        /// The campaign.
        name: String,
    },
}

fn attribute_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| failure(Exit::Usage, format!("{pair:?} is not NAME=VALUE")))
        })
        .collect()
}

/// `director vehicle set-attribute`: sets NAME=VALUE pairs and removes `unset` names.
pub(super) async fn set_attributes(
    json: bool,
    remote: &Remote,
    vin: &str,
    set: &[String],
    unset: &[String],
) -> anyhow::Result<()> {
    let mut changes: BTreeMap<String, Value> = attribute_pairs(set)?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    changes.extend(unset.iter().map(|k| (k.clone(), Value::Null)));
    let value = call(
        remote,
        reqwest::Method::PUT,
        &format!("/api/v1/vehicles/{}/attributes", url_part(vin)),
        Some(json!(changes)),
    )
    .await?;
    print(json, &value, |v| {
        let rows = v
            .as_object()
            .map(|m| m.iter().map(|(k, v)| vec![k.clone(), text(v)]).collect())
            .unwrap_or_default();
        table(&["ATTRIBUTE", "VALUE"], rows)
    });
    Ok(())
}

fn group_table(rows: &Value) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    table(
        &["GROUP", "KIND", "MEMBERS", "FILTER", "CREATED"],
        rows.iter()
            .map(|g| {
                vec![
                    text(&g["name"]),
                    text(&g["kind"]),
                    text(&g["members"]),
                    if g["filter"].is_null() {
                        "-".into()
                    } else {
                        g["filter"].to_string()
                    },
                    text(&g["created_at"]),
                ]
            })
            .collect(),
    )
}

fn show_group(v: &Value) -> String {
    let mut out = group_table(&json!([v]));
    let vins: Vec<String> = v["vins"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    out.push_str(&format!("\n\nmembers: {}", vins.join(" ")));
    out
}

pub(super) async fn group(json: bool, command: GroupCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        GroupCommand::Create {
            remote,
            name,
            vins,
            hardware_ids,
            installed,
            attributes,
        } => {
            let body = if hardware_ids.is_empty() && installed.is_empty() && attributes.is_empty() {
                json!({"name": name, "vins": vins})
            } else {
                json!({"name": name, "filter": {
                    "hardware_ids": hardware_ids,
                    "images": installed,
                    "attributes": attribute_pairs(&attributes)?,
                }})
            };
            let value = call(&remote, Method::POST, "/api/v1/groups", Some(body)).await?;
            print(json, &value, show_group);
        }
        GroupCommand::List { remote } => {
            let value = call(&remote, Method::GET, "/api/v1/groups", None).await?;
            print(json, &value, group_table);
        }
        GroupCommand::Show { remote, name } => {
            let path = format!("/api/v1/groups/{}", url_part(&name));
            let value = call(&remote, Method::GET, &path, None).await?;
            print(json, &value, show_group);
        }
        GroupCommand::Add { remote, name, vins } => {
            change_members(json, &remote, &name, json!({"add": vins})).await?;
        }
        GroupCommand::Remove { remote, name, vins } => {
            change_members(json, &remote, &name, json!({"remove": vins})).await?;
        }
    }
    Ok(())
}

async fn change_members(
    json: bool,
    remote: &Remote,
    name: &str,
    body: Value,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/groups/{}/members", url_part(name));
    let value = call(remote, reqwest::Method::PUT, &path, Some(body)).await?;
    print(json, &value, show_group);
    Ok(())
}

fn campaign_summary(rows: &Value) -> String {
    let rows = rows.as_array().cloned().unwrap_or_default();
    table(
        &[
            "CAMPAIGN",
            "STATE",
            "WAVE",
            "GROUP",
            "IMAGES",
            "VEHICLES",
            "INSTALLED",
            "FAILED",
            "UPDATED",
        ],
        rows.iter()
            .map(|c| {
                let sum = |key: &str| -> u64 {
                    c["progress"]
                        .as_array()
                        .map(|w| w.iter().filter_map(|w| w[key].as_u64()).sum())
                        .unwrap_or(0)
                };
                let images: Vec<String> = c["images"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                let waves = c["waves"].as_array().map_or(0, Vec::len);
                vec![
                    text(&c["name"]),
                    text(&c["state"]),
                    format!("{}/{waves}", text(&c["current_wave"])),
                    text(&c["group"]),
                    images.join(","),
                    sum("vehicles").to_string(),
                    sum("installed").to_string(),
                    sum("failed").to_string(),
                    text(&c["updated_at"]),
                ]
            })
            .collect(),
    )
}

fn show_campaign(c: &Value) -> String {
    let list = |key: &str| -> String {
        c[key]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "campaign {}: {}{}\nimages: {}\ngroup: {}{}\nwaves: {} (pause above {} failed; soak {} s; a wave times out after {} s)\nwindows: {}\n\n",
        text(&c["name"]),
        text(&c["state"]),
        match c["reason"].as_str() {
            Some(r) if !r.is_empty() => format!(" ({r})"),
            _ => String::new(),
        },
        list("images"),
        text(&c["group"]),
        if c["join_later"] == true {
            " (later members join)"
        } else {
            ""
        },
        list("waves"),
        text(&c["max_failure_ratio"]),
        text(&c["soak_secs"]),
        text(&c["wave_timeout_secs"]),
        list("windows"),
    );
    let rows = c["progress"].as_array().cloned().unwrap_or_default();
    out.push_str(&table(
        &[
            "WAVE",
            "PLAN",
            "STARTED",
            "VEHICLES",
            "WAITING",
            "INSTALLING",
            "INSTALLED",
            "FAILED",
            "SKIPPED",
            "CANCELLED",
        ],
        rows.iter()
            .map(|w| {
                let mut row = vec![text(&w["wave"]), text(&w["plan"]), text(&w["started"])];
                row.extend(
                    [
                        "vehicles",
                        "waiting",
                        "installing",
                        "installed",
                        "failed",
                        "skipped",
                        "cancelled",
                    ]
                    .iter()
                    .map(|k| text(&w[*k])),
                );
                row
            })
            .collect(),
    ));
    let not_picked = c["not_picked"].as_u64().unwrap_or(0);
    if not_picked > 0 {
        out.push_str(&format!(
            "\n\n{not_picked} members of the group not picked by a wave yet"
        ));
    }
    out
}

pub(super) async fn campaign(json: bool, command: CampaignCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let action = |remote: Remote, name: String, action: &'static str, reason: Option<String>| async move {
        let path = format!("/api/v1/campaigns/{}/{action}", url_part(&name));
        let body = reason.map(|r| json!({"reason": r}));
        call(&remote, Method::POST, &path, body).await
    };
    let value = match command {
        CampaignCommand::Create {
            remote,
            name,
            images,
            group,
            waves,
            max_failure_ratio,
            soak,
            windows,
            join_later,
            wave_timeout,
            start,
        } => {
            let body = json!({
                "name": name, "images": images, "group": group, "waves": waves,
                "max_failure_ratio": max_failure_ratio, "soak_secs": soak,
                "windows": windows, "join_later": join_later,
                "wave_timeout_secs": wave_timeout,
            });
            let created = call(&remote, Method::POST, "/api/v1/campaigns", Some(body)).await?;
            if start {
                action(remote, name, "start", None).await?
            } else {
                created
            }
        }
        CampaignCommand::List { remote } => {
            let value = call(&remote, Method::GET, "/api/v1/campaigns", None).await?;
            print(json, &value, campaign_summary);
            return Ok(());
        }
        CampaignCommand::Vehicles { remote, name } => {
            let path = format!("/api/v1/campaigns/{}/vehicles", url_part(&name));
            let value = call(&remote, Method::GET, &path, None).await?;
            print(json, &value, |rows| {
                let rows = rows.as_array().cloned().unwrap_or_default();
                table(
                    &["VIN", "WAVE", "OUTCOME", "DETAIL"],
                    rows.iter()
                        .map(|r| {
                            ["vin", "wave", "outcome", "detail"]
                                .iter()
                                .map(|k| text(&r[*k]))
                                .collect()
                        })
                        .collect(),
                )
            });
            return Ok(());
        }
        CampaignCommand::Show { remote, name } => {
            let path = format!("/api/v1/campaigns/{}", url_part(&name));
            call(&remote, Method::GET, &path, None).await?
        }
        CampaignCommand::Start { remote, name } => action(remote, name, "start", None).await?,
        CampaignCommand::Pause {
            remote,
            name,
            reason,
        } => action(remote, name, "pause", reason).await?,
        CampaignCommand::Resume { remote, name } => action(remote, name, "resume", None).await?,
        CampaignCommand::Abort {
            remote,
            name,
            reason,
        } => action(remote, name, "abort", reason).await?,
        CampaignCommand::RetryFailed { remote, name } => {
            action(remote, name, "retry-failed", None).await?
        }
    };
    print(json, &value, show_campaign);
    Ok(())
}
