//! Workflow and team labels as every domain module reads them: the default workflow, families
//! (`a/b` → `a`) and the longest label accepted.

/// The workflow an empty label means.
pub const DEFAULT_WORKFLOW: &str = "default";

/// Longest workflow, team or task-type label accepted, bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// The workflow a label stands for: an empty label is [`DEFAULT_WORKFLOW`].
pub fn workflow_key(workflow: &str) -> &str {
    if workflow.is_empty() {
        DEFAULT_WORKFLOW
    } else {
        workflow
    }
}

/// The family of a workflow: its part before the first `/` or `.`; `None` without one.
pub fn family_of(workflow: &str) -> Option<&str> {
    let family = workflow.split(['/', '.']).next()?;
    (!family.is_empty() && family.len() < workflow.len()).then_some(family)
}
