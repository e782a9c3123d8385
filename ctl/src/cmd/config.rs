//! `show-config` and `edit-config`: the dynamic configuration in the DCS `config` key, edited
//! in `$EDITOR`, from `--set`/`--pg` pairs or from a file, written by compare-and-swap.

use anyhow::Context;
use serde_json::{Map, Value};

use crate::cli::{EditConfigArgs, ShowConfigArgs};
use crate::client;
use crate::cmd::check_group;
use crate::config_edit::{self, apply_config_changes, apply_yaml, format_config, load_yaml};
use crate::context::Ctx;
use crate::difflib::unified_diff;
use crate::error::{fail, CtlError};
use crate::pyfmt::{json_dumps_compact, py_eq};
use crate::term::{out, read_source};

pub(crate) async fn show_config(ctx: &Ctx, a: ShowConfigArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    let dcs = ctx.dcs(&name).await?;
    let c = ctx.cluster(&dcs).await?;
    out(&config_edit::show_config(&c));
    Ok(())
}

fn invoke_editor(before: &str, cluster_name: &str) -> anyhow::Result<(String, Map<String, Value>)> {
    let editor =
        match std::env::var("EDITOR").ok().filter(|e| !e.is_empty()) {
            Some(e) => e,
            None => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let found = ["editor", "vi"].iter().find_map(|ed| {
                    std::env::split_paths(&path)
                        .map(|d| d.join(ed))
                        .find(|p| p.is_file())
                });
                match found {
                    Some(p) => p.display().to_string(),
                    None => return fail(
                        "EDITOR environment variable is not set. editor or vi are not available",
                    ),
                }
            }
        };
    let safe = cluster_name.replace('/', "_");
    let nanos = chrono::Utc::now().timestamp_subsec_nanos();
    let tmp = std::env::temp_dir().join(format!(
        "{safe}-config-{}{nanos:08x}.yaml",
        std::process::id()
    ));
    std::fs::write(&tmp, before).with_context(|| format!("writing {}", tmp.display()))?;
    let status = if editor.contains(char::is_whitespace) {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&tmp)
            .status()
    } else {
        std::process::Command::new(&editor).arg(&tmp).status()
    };
    let result = (|| {
        let status = status.with_context(|| format!("running {editor}"))?;
        if !status.success() {
            return fail(format!(
                "Editor exited with return code {}",
                status.code().unwrap_or(-1)
            ));
        }
        let after = std::fs::read_to_string(&tmp)?;
        let data = match load_yaml(&after).map_err(CtlError)? {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return fail(format!(
                    "the edited configuration is not a mapping: {other}"
                ))
            }
        };
        Ok((after, data))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

pub(crate) async fn edit_config(ctx: &Ctx, a: EditConfigArgs) -> anyhow::Result<()> {
    let EditConfigArgs {
        cluster_name,
        group,
        quiet,
        kvpairs,
        pgkvpairs,
        apply_filename,
        replace_filename,
        force,
    } = a;
    check_group(group)?;
    let name = &ctx.scope_or(cluster_name)?;
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let Some(config) = &cluster.config else {
        return fail(format!(
            "The config key does not exist in the cluster {name}"
        ));
    };
    let data = &config.value.data;
    let before = format_config(data);
    let mut after: Option<String> = None;
    let mut changed = data.clone();
    if let Some(f) = &replace_filename {
        changed = apply_yaml(&Map::new(), &read_source(f)?).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    if let Some(f) = &apply_filename {
        changed = apply_yaml(&changed, &read_source(f)?).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    if !kvpairs.is_empty() || !pgkvpairs.is_empty() {
        let mut all = kvpairs.clone();
        all.extend(
            pgkvpairs
                .iter()
                .map(|v| format!("postgresql.parameters.{}", v.trim_start())),
        );
        changed = apply_config_changes(&changed, &all).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    let after = match after {
        Some(a) => a,
        None => {
            let (a, d) = invoke_editor(&before, name)?;
            changed = d;
            a
        }
    };
    if py_eq(
        &Value::Object(data.clone()),
        &Value::Object(changed.clone()),
    ) {
        if !quiet {
            out("Not changed\n");
        }
        return Ok(());
    }
    if !quiet {
        out(&unified_diff(&before, &after));
    }
    if (apply_filename.as_deref() == Some("-") || replace_filename.as_deref() == Some("-"))
        && !force
    {
        out("Use --force option to apply changes\n");
        return Ok(());
    }
    if force || client::confirm("Apply these changes?")? {
        let json = json_dumps_compact(&Value::Object(changed));
        if !dcs
            .set_config(&json, Some(config.version))
            .await
            .context("writing the config key")?
        {
            return fail("Config modification aborted due to concurrent changes");
        }
        out("Configuration changed\n");
    }
    Ok(())
}
