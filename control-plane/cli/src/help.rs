//! The examples at the end of each command's `--help`.

pub(crate) const GET_EXAMPLES: &str = "Examples:
  ternctl get agents                          # every agent, with status and labels
  ternctl get ag -l 'site in (berlin,paris),!gpu' -o wide
  ternctl get agent edge-1 -o yaml
  ternctl get deployments -o name
  ternctl get agents -o jsonpath='{range .items[*]}{.name}{\"\\t\"}{.status}{\"\\n\"}{end}'
  ternctl get deploy --watch                  # print rows as they change";

pub(crate) const DESCRIBE_EXAMPLES: &str = "Examples:
  ternctl describe agent edge-1
  ternctl describe deployment/detector-edge
  ternctl describe release detector:3 -o json";

pub(crate) const EXPLAIN_EXAMPLES: &str = "Examples:
  ternctl explain deployment
  ternctl explain deploy.spec.rollout.strategy
  ternctl explain pipeline.spec --recursive
  ternctl explain pipeline -o json > pipeline.schema.json";

pub(crate) const APPLY_EXAMPLES: &str = "Examples:
  ternctl apply -f pipeline.yaml
  ternctl apply -f pipelines/ -R             # every .yaml, .yml and .json below
  cat deploy.yaml | ternctl apply -f -
  ternctl apply -f deploy.yaml --dry-run=server   # checked by the control plane, nothing changed";

pub(crate) const DIFF_EXAMPLES: &str = "Examples:
  ternctl diff -f deploy.yaml
  ternctl diff -f manifests/ -R || echo \"changes pending\"   # exit 1: changes, 2: an error";

pub(crate) const DELETE_EXAMPLES: &str = "Examples:
  ternctl delete deployment detector-edge
  ternctl delete -f deploy.yaml
  ternctl delete agent edge-7                # decommission: revoke and forget
  ternctl delete token 3f2a9c";

pub(crate) const ROLLOUT_STATUS_EXAMPLES: &str = "Examples:
  ternctl rollout status detector-edge --timeout 10m && echo committed
  ternctl rollout status detector-edge --watch=false   # the state now; exit 0 only if committed";

pub(crate) const CONFIG_EXAMPLES: &str = "Examples:
  ternctl config set-context staging --from staging/ternctl.toml
  ternctl config get-contexts
  ternctl config use-context staging
  ternctl --context default get agents        # one command against another control plane";

pub(crate) const COMPLETION_EXAMPLES: &str = "Examples:
  ternctl completion bash > /etc/bash_completion.d/ternctl
  ternctl completion zsh > \"${fpath[1]}/_ternctl\"
  ternctl completion fish > ~/.config/fish/completions/ternctl.fish";

pub(crate) const MAN_EXAMPLES: &str = "Examples:
  ternctl man /usr/local/share/man/man1 && man ternctl-get";

pub(crate) const TOKEN_EXAMPLES: &str = "Examples:
  ternctl token create --labels site=berlin,tier=edge --ttl 30m
  tern-agent join --control-plane cp.example:7443 --token \"$(ternctl token create)\" ...";

pub(crate) const KEYS_EXAMPLES: &str = "Examples:
  ternctl keys generate --out publisher      # publisher.key (0600) and publisher.pub";

pub(crate) const TRUST_EXAMPLES: &str = "Examples:
  ternctl trust init --root-key root.key --publisher publisher.pub
  ternctl trust rotate --root-key root.key --publisher publisher.pub --publisher second.pub --threshold 2
  ternctl trust init --root-key root.key --publisher publisher.pub --offline && ternctl trust push trust-root.json
  ternctl trust show -o json";

pub(crate) const SIGN_EXAMPLES: &str = "Examples:
  ternctl sign --key publisher.key --kind model --name detector --version 3 model.onnx
  ternctl sign --key-env TERN_SIGNING_KEY --kind plugin --name prep --version 7 prep.wasm
  vault read -field=key secret/tern | ternctl sign --key - --kind plugin --name prep --version 7 prep.wasm";

pub(crate) const PUSH_EXAMPLES: &str = "Examples:
  ternctl push model.onnx                     # model.onnx and model.onnx.release
  ternctl push prep.wasm --quiet";

pub(crate) const REVOKE_EXAMPLES: &str = "Examples:
  ternctl revoke agent edge-7";

pub(crate) const LABEL_EXAMPLES: &str = "Examples:
  ternctl label agent edge-1 tier=canary
  ternctl label agent edge-1 site=paris --overwrite
  ternctl label agent edge-1 tier-           # remove the label";

pub(crate) const TOP_EXAMPLES: &str = "Examples:
  ternctl top agents
  ternctl top pipelines --window 15m -o json";

pub(crate) const BASELINE_EXAMPLES: &str = "Examples:
  ternctl baseline create churn-inputs --from-file samples.csv --tensor input
  ternctl baseline create churn-inputs --pipeline churn --window 1d --out baseline.json";

pub(crate) const DRIFT_EXAMPLES: &str = "Examples:
  ternctl drift churn
  ternctl drift churn -o json";

pub(crate) const DASHBOARD_EXAMPLES: &str = "Examples:
  xdg-open \"$(ternctl dashboard)\"";

pub(crate) const EXPERIMENT_EXAMPLES: &str = "Examples:
  ternctl experiment status churn-ab
  ternctl experiment status churn-ab --window 1h -o yaml";

pub(crate) const ROLLOUT_EXAMPLES: &str = "Examples:
  ternctl rollout status detector-edge --timeout 10m
  ternctl rollout pause detector-edge
  ternctl rollout resume detector-edge
  ternctl rollout undo detector-edge";

/// The command tree with examples on every command: a subcommand without its own shows its
/// parent's (`ternctl trust init --help` shows the `trust` examples).
pub(crate) fn with_examples(command: clap::Command) -> clap::Command {
    fn inherit(mut command: clap::Command) -> clap::Command {
        let examples = command.get_after_help().map(|h| h.to_string());
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            let examples = examples.clone();
            command = command.mut_subcommand(name, |sub| {
                let sub = match (&examples, sub.get_after_help()) {
                    (Some(parent), None) => sub.after_help(parent.clone()),
                    _ => sub,
                };
                inherit(sub)
            });
        }
        command
    }
    inherit(command)
}
