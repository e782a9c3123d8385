//! Choosing the members a command acts on, with patronictl's prompts (its `get_members` and
//! `confirm_members_action`).

use patrol_dcs::{Cluster, Member};

use crate::client;
use crate::error::fail;
use crate::list::output_members;
use crate::members::{all_members, CtlRole};
use crate::table::Format;
use crate::term::out;
use crate::time::isoformat;

/// The cluster's member table, as shown before a prompt.
pub(crate) fn print_members(c: &Cluster, name: &str) {
    out(&output_members(c, name, false, Format::Pretty));
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn get_members<'a>(
    cluster: &'a Cluster,
    name: &str,
    member_names: &[String],
    role: CtlRole,
    role_repr: &str,
    force: bool,
    action: &str,
    ask_confirmation: bool,
) -> anyhow::Result<Vec<&'a Member>> {
    let members = all_members(cluster, role);
    let mut candidates: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    candidates.sort();
    if member_names.is_empty() && candidates.is_empty() {
        return fail(format!("{name} cluster doesn't have any members"));
    }
    print_members(cluster, name);
    let mut names: Vec<String> = Vec::new();
    if !member_names.is_empty() {
        for n in member_names {
            if cluster.member(n).is_none() {
                return fail(format!("{n} is not a member of cluster"));
            }
        }
        names = member_names
            .iter()
            .filter(|n| candidates.contains(n))
            .cloned()
            .collect();
        if names.is_empty() {
            return fail(format!("No {role_repr} among provided members"));
        }
    } else if action != "reinitialize" {
        names = candidates.clone();
    }
    if names.is_empty() && !force {
        names = vec![client::prompt(
            &format!(
                "Which member do you want to {action} [{}]?",
                candidates.join(", ")
            ),
            Some(""),
        )?];
    }
    for n in &names {
        if !candidates.contains(n) {
            return fail(format!("{n} is not a member of cluster"));
        }
    }
    let selected: Vec<&Member> = members
        .into_iter()
        .filter(|m| names.contains(&m.name))
        .collect();
    if ask_confirmation {
        confirm_members_action(&selected, force, action, None, false)?;
    }
    Ok(selected)
}

pub(crate) fn confirm_members_action(
    members: &[&Member],
    force: bool,
    action: &str,
    scheduled_at: Option<&chrono::DateTime<chrono::FixedOffset>>,
    pending: bool,
) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    match scheduled_at {
        Some(at) => {
            let ok = if pending {
                client::confirm("The nodes needing a restart will be identified at the scheduled time, and might be different from the ones showing pending restart right now. Is this fine?")?
            } else {
                client::confirm(&format!(
                    "Are you sure you want to schedule {action} of members {} at {}?",
                    names.join(", "),
                    isoformat(at).replacen('T', " ", 1)
                ))?
            };
            if !ok {
                return fail(format!("Aborted scheduled {action}"));
            }
        }
        None => {
            if !client::confirm(&format!(
                "Are you sure you want to {action} members {}?",
                names.join(", ")
            ))? {
                return fail(format!("Aborted {action}"));
            }
        }
    }
    Ok(())
}
