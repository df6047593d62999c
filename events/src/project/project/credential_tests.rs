#![allow(clippy::unwrap_used)]

use super::*;
use crate::project::template::Catalogue;

fn provisioned() -> Project {
    let template = Catalogue::builtin().get("service").unwrap().clone();
    let name = ProjectName::parse("billing").unwrap();
    let mut project = Project::default();
    fn apply(project: &mut Project, events: Vec<ProjectEvent>) {
        for e in events {
            project.apply(&e, Utc::now());
            project.version += 1;
        }
    }
    let requested = request(Uuid::from_u128(1), &name, &template, BTreeMap::new()).unwrap();
    apply(&mut project, requested);
    while let Some(step) = next_step(&project).map(|s| s.name.clone()) {
        let started = start_step(&project, &step).unwrap();
        apply(&mut project, started);
        let done = step_succeeded(&project, &step, serde_json::json!({})).unwrap();
        apply(&mut project, done);
    }
    project
}

#[test]
fn database_credentials_are_handed_out_once() {
    let mut project = provisioned();
    let events = issue_credentials(&project, "database").unwrap();
    assert_eq!(
        events,
        [ProjectEvent::CredentialsIssued {
            step: "database".into()
        }]
    );
    project.apply(&events[0], Utc::now());

    assert_eq!(
        issue_credentials(&project, "database"),
        Err(ProjectError::CredentialsAlreadyIssued)
    );
}

#[test]
fn a_rotation_records_the_new_key_and_lets_the_owner_have_the_new_password_once() {
    let mut project = provisioned();
    let issued = issue_credentials(&project, "database").unwrap();
    project.apply(&issued[0], Utc::now());

    let events = rotate_database_password(&project, "database", "2027-01").unwrap();

    assert_eq!(
        events,
        [ProjectEvent::DatabasePasswordRotated {
            step: "database".into(),
            key_id: "2027-01".into()
        }]
    );
    project.apply(&events[0], Utc::now());
    let output = &project.step("database").unwrap().output;
    assert_eq!(password_key_id(output), Some("2027-01"));
    assert!(issue_credentials(&project, "database").is_ok());
    assert_eq!(
        rotate_database_password(&project, "database", "2027-01"),
        Ok(Vec::new()),
        "the same key again records nothing"
    );
}

#[test]
fn no_rotation_for_other_steps_or_while_the_project_is_deleted() {
    let mut project = provisioned();
    assert!(matches!(
        rotate_database_password(&project, "repository", "k"),
        Err(ProjectError::WrongState { .. })
    ));
    assert_eq!(
        rotate_database_password(&project, "nope", "k"),
        Err(ProjectError::UnknownStep("nope".into()))
    );
    project.apply(&ProjectEvent::DeletionRequested, Utc::now());
    assert!(matches!(
        rotate_database_password(&project, "database", "k"),
        Err(ProjectError::WrongState { .. })
    ));
}

#[test]
fn only_a_succeeded_database_step_has_credentials() {
    let project = provisioned();
    assert!(matches!(
        issue_credentials(&project, "repository"),
        Err(ProjectError::WrongState { .. })
    ));
    assert_eq!(
        issue_credentials(&project, "nope"),
        Err(ProjectError::UnknownStep("nope".into()))
    );
}
