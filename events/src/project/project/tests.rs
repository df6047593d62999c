use super::*;
use crate::StreamId;
use crate::project::template::Catalogue;
use serde_json::json;

fn given(events: &[ProjectEvent]) -> Project {
    let mut project = Project {
        id: Uuid::nil(),
        ..Project::default()
    };
    for e in events {
        project.apply(e, Utc::now());
        project.version += 1;
    }
    project
}

fn service() -> Template {
    Catalogue::builtin().get("service").unwrap().clone()
}

fn requested() -> Vec<ProjectEvent> {
    request(
        Uuid::from_u128(7),
        &ProjectName::parse("billing").unwrap(),
        &service(),
        BTreeMap::new(),
    )
    .unwrap()
}

/// `history` followed by the events of `decision` on the project it folds to.
fn then(
    mut history: Vec<ProjectEvent>,
    decision: impl FnOnce(&Project) -> Result<Vec<ProjectEvent>, ProjectError>,
) -> Vec<ProjectEvent> {
    let events = decision(&given(&history)).unwrap();
    history.extend(events);
    history
}

/// A project with every step of `service` provisioned.
fn ready() -> Vec<ProjectEvent> {
    let mut history = requested();
    for step in ["repository", "database", "webhook"] {
        history = then(history, |p| start_step(p, step));
        history = then(history, |p| step_succeeded(p, step, json!({})));
    }
    history
}

fn statuses(project: &Project) -> Vec<StepStatus> {
    project.steps.iter().map(|s| s.status).collect()
}

#[test]
fn a_request_yields_one_event_with_defaults_applied() {
    let given_parameters = BTreeMap::from([("language".to_owned(), "go".to_owned())]);
    let events = request(
        Uuid::from_u128(7),
        &ProjectName::parse("billing").unwrap(),
        &service(),
        given_parameters,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![ProjectEvent::ProjectRequested {
            owner_id: Uuid::from_u128(7),
            name: "billing".into(),
            template: "service".into(),
            template_version: 1,
            parameters: BTreeMap::from([
                ("description".to_owned(), "A service".to_owned()),
                ("language".to_owned(), "go".to_owned()),
            ]),
            steps: service().steps,
            // The template's cost is copied into the project.
            monthly_cost_cents: 200,
        }]
    );
    let project = given(&events);
    assert_eq!(project.status, ProjectStatus::Requested);
    assert_eq!(statuses(&project), [StepStatus::Pending; 3]);
    assert_eq!(
        next_step(&project).map(|s| s.name.as_str()),
        Some("repository")
    );
}

#[test]
fn a_request_with_an_unknown_or_missing_parameter_is_refused() {
    let name = ProjectName::parse("billing").unwrap();
    assert_eq!(
        request(
            Uuid::nil(),
            &name,
            &service(),
            BTreeMap::from([("colour".to_owned(), "red".to_owned())])
        ),
        Err(ProjectError::Template(TemplateError::UnknownParameter(
            "colour".into()
        )))
    );
    let mut template = service();
    template.parameters[0].default = None;
    let error = request(Uuid::nil(), &name, &template, BTreeMap::new()).unwrap_err();
    assert_eq!(
        error,
        ProjectError::Template(TemplateError::MissingParameter("description".into()))
    );
    assert_eq!(error.to_string(), "parameter \"description\" is required");
}

#[test]
fn provisioning_every_step_in_order_ends_ready() {
    let history = ready();
    assert_eq!(history.last(), Some(&ProjectEvent::ProjectReady));
    assert_eq!(
        history
            .iter()
            .filter(|e| **e == ProjectEvent::ProjectReady)
            .count(),
        1
    );
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Ready);
    assert!(project.status.is_final());
    assert_eq!(statuses(&project), [StepStatus::Succeeded; 3]);
    assert!(next_step(&project).is_none());
    assert!(matches!(
        start_step(&project, "repository"),
        Err(ProjectError::WrongState {
            status: ProjectStatus::Ready,
            ..
        })
    ));
}

#[test]
fn steps_cannot_be_started_out_of_order() {
    let project = given(&requested());
    assert_eq!(
        start_step(&project, "database"),
        Err(ProjectError::NotNextStep("database".into()))
    );
    assert_eq!(
        start_step(&project, "dns"),
        Err(ProjectError::UnknownStep("dns".into()))
    );
    assert_eq!(
        step_succeeded(&project, "repository", json!({})),
        Err(ProjectError::StepNotRunning("repository".into()))
    );
}

#[test]
fn a_permanent_failure_ends_failed_with_the_reason() {
    let history = then(requested(), |p| start_step(p, "repository"));
    let events = step_failed(
        &given(&history),
        "repository",
        "disk full",
        true,
        Some(500),
        false,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![
            ProjectEvent::StepFailed {
                step: "repository".into(),
                attempt: 1,
                error: "disk full".into(),
                permanent: true,
                retry_in_ms: None,
            },
            ProjectEvent::ProjectFailed {
                step: "repository".into(),
                reason: "disk full".into(),
            },
        ]
    );
    let project = given(&[history, events].concat());
    assert_eq!(project.status, ProjectStatus::Failed);
    assert_eq!(project.failure.as_deref(), Some("disk full"));
    assert_eq!(
        project.step("repository").unwrap().last_error.as_deref(),
        Some("disk full")
    );
    assert!(next_step(&project).is_none());
}

#[test]
fn a_transient_failure_keeps_provisioning_and_counts_attempts() {
    let mut history = then(requested(), |p| start_step(p, "repository"));
    history = then(history, |p| {
        step_failed(p, "repository", "timeout", false, Some(1_000), false)
    });
    assert_eq!(
        history.last(),
        Some(&ProjectEvent::StepFailed {
            step: "repository".into(),
            attempt: 1,
            error: "timeout".into(),
            permanent: false,
            retry_in_ms: Some(1_000),
        })
    );
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Provisioning);
    assert!(!project.status.is_final());
    assert_eq!(
        next_step(&project).map(|s| s.name.as_str()),
        Some("repository")
    );

    assert_eq!(
        start_step(&project, "repository"),
        Ok(vec![ProjectEvent::StepStarted {
            step: "repository".into(),
            attempt: 2
        }])
    );
    history = then(history, |p| start_step(p, "repository"));
    let events = step_failed(
        &given(&history),
        "repository",
        "timeout",
        false,
        Some(2_000),
        true,
    )
    .unwrap();
    assert_eq!(
        events.last(),
        Some(&ProjectEvent::ProjectFailed {
            step: "repository".into(),
            reason: "timeout (gave up after 2 attempts)".into(),
        })
    );
}

#[test]
fn retry_resumes_at_the_failed_step_without_redoing_earlier_ones() {
    let mut history = then(requested(), |p| start_step(p, "repository"));
    history = then(history, |p| step_succeeded(p, "repository", json!({})));
    history = then(history, |p| start_step(p, "database"));
    assert_eq!(
        retry(&given(&history)),
        Err(ProjectError::WrongState {
            status: ProjectStatus::Provisioning,
            action: "retry"
        })
    );
    history = then(history, |p| {
        step_failed(p, "database", "connection refused", false, None, true)
    });

    history = then(history, retry);

    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Provisioning);
    assert_eq!(project.failure, None);
    assert_eq!(
        statuses(&project),
        [
            StepStatus::Succeeded,
            StepStatus::Pending,
            StepStatus::Pending
        ]
    );
    assert_eq!(project.step("database").unwrap().attempts, 0);
    assert_eq!(
        next_step(&project).map(|s| s.name.as_str()),
        Some("database")
    );
    assert_eq!(
        start_step(&project, "database"),
        Ok(vec![ProjectEvent::StepStarted {
            step: "database".into(),
            attempt: 1
        }])
    );
    assert_eq!(
        start_step(&project, "repository"),
        Err(ProjectError::NotNextStep("repository".into()))
    );
    assert!(matches!(
        retry(&given(&ready())),
        Err(ProjectError::WrongState { .. })
    ));
}

#[test]
fn deleting_a_ready_project_undoes_the_steps_in_reverse_and_ends_deleted() {
    let mut history = then(ready(), delete);
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Deleting);
    let order: Vec<&str> = steps_to_deprovision(&project)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(order, ["webhook", "database", "repository"]);
    assert_eq!(delete(&project), Err(ProjectError::AlreadyDeleted));
    assert_eq!(
        deprovisioned(&project, "repository"),
        Err(ProjectError::NotNextStep("repository".into()))
    );
    assert_eq!(
        finish_deletion(&project),
        Err(ProjectError::DeprovisionPending("webhook".into()))
    );

    for step in order {
        history = then(history, |p| deprovisioned(p, step));
    }

    assert_eq!(history.last(), Some(&ProjectEvent::ProjectDeleted));
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Deleted);
    assert_eq!(statuses(&project), [StepStatus::Deprovisioned; 3]);
    assert_eq!(delete(&project), Err(ProjectError::AlreadyDeleted));
}

#[test]
fn deleting_a_project_whose_first_step_failed_undoes_that_step_only() {
    let mut history = then(requested(), |p| start_step(p, "repository"));
    history = then(history, |p| {
        step_failed(p, "repository", "bad template", true, None, false)
    });
    history = then(history, delete);
    let project = given(&history);
    let names: Vec<&str> = steps_to_deprovision(&project)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["repository"],
        "it may have left part of a repository"
    );

    history = then(history, |p| deprovisioned(p, "repository"));

    assert_eq!(given(&history).status, ProjectStatus::Deleted);
}

#[test]
fn deleting_a_project_with_nothing_provisioned_finishes_at_once() {
    let mut history = requested();
    for step in ["repository", "database", "webhook"] {
        history = then(history, |p| skip_step(p, step, "not needed"));
    }
    assert_eq!(given(&history).status, ProjectStatus::Ready);
    history = then(history, delete);
    assert!(steps_to_deprovision(&given(&history)).is_empty());

    history = then(history, finish_deletion);

    assert_eq!(given(&history).status, ProjectStatus::Deleted);
}

#[test]
fn a_failed_deprovisioning_counts_attempts_and_ends_in_deletion_failed() {
    let mut history = then(ready(), delete);
    history = then(history, |p| {
        deprovision_failed(p, "webhook", "503", false, Some(100), false)
    });
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Deleting);
    assert_eq!(project.step("webhook").unwrap().attempts, 1);
    assert_eq!(
        project.step("webhook").unwrap().status,
        StepStatus::Succeeded
    );

    history = then(history, |p| {
        deprovision_failed(p, "webhook", "503", false, Some(200), true)
    });

    assert_eq!(
        history.last(),
        Some(&ProjectEvent::DeletionFailed {
            step: "webhook".into(),
            reason: "503 (gave up after 2 attempts)".into(),
        })
    );
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::DeletionFailed);
    assert!(project.status.is_final());
    // Deleting again starts a new round at the same step.
    let project = given(&then(history, delete));
    assert_eq!(project.status, ProjectStatus::Deleting);
    assert_eq!(project.step("webhook").unwrap().attempts, 0);
    assert_eq!(steps_to_deprovision(&project)[0].name, "webhook");
}

#[test]
fn deleting_while_provisioning_is_busy() {
    assert_eq!(delete(&given(&requested())), Err(ProjectError::Busy));
    let history = then(requested(), |p| start_step(p, "repository"));
    assert_eq!(delete(&given(&history)), Err(ProjectError::Busy));
}

#[test]
fn skipping_the_last_step_ends_ready() {
    let mut history = requested();
    for step in ["repository", "database"] {
        history = then(history, |p| start_step(p, step));
        history = then(history, |p| step_succeeded(p, step, json!({})));
    }
    let events = skip_step(&given(&history), "webhook", "no webhook URL configured").unwrap();
    assert_eq!(
        events,
        vec![
            ProjectEvent::StepSkipped {
                step: "webhook".into(),
                reason: "no webhook URL configured".into(),
            },
            ProjectEvent::ProjectReady,
        ]
    );
    let project = given(&[history, events].concat());
    assert_eq!(project.status, ProjectStatus::Ready);
    // Nothing to undo for a skipped step.
    let order: Vec<&str> = steps_to_deprovision(&project)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(order, ["database", "repository"]);
}

#[test]
fn skipping_an_earlier_step_moves_on_without_ending() {
    let history = then(requested(), |p| skip_step(p, "repository", "not needed"));
    assert_eq!(history.len(), 2);
    let project = given(&history);
    assert_eq!(project.status, ProjectStatus::Provisioning);
    assert_eq!(
        next_step(&project).map(|s| s.name.as_str()),
        Some("database")
    );
}

#[test]
fn wrong_state_messages_are_plain_words() {
    assert_eq!(
        ProjectError::WrongState {
            status: ProjectStatus::DeletionFailed,
            action: "retry"
        }
        .to_string(),
        "cannot retry while the project's status is deletion_failed"
    );
}

fn recorded(event: &ProjectEvent, version: i64) -> RecordedEvent {
    let new = event.to_new_event();
    RecordedEvent {
        position: version,
        transaction_id: 1,
        event_id: new.event_id,
        stream_id: StreamId::project(Uuid::nil()).into(),
        stream_version: version,
        event_type: new.event_type,
        schema_version: new.schema_version,
        data: new.data,
        metadata: json!({}),
        recorded_at: Utc::now(),
        hash: vec![],
    }
}

#[test]
fn events_round_trip_through_the_log_shape() {
    let mut history = then(ready(), delete);
    history.push(ProjectEvent::StepFailed {
        step: "database".into(),
        attempt: 3,
        error: "timeout".into(),
        permanent: false,
        retry_in_ms: Some(250),
    });
    history.extend([
        ProjectEvent::ProjectFailed {
            step: "database".into(),
            reason: "timeout".into(),
        },
        ProjectEvent::RetryRequested,
        ProjectEvent::StepSkipped {
            step: "webhook".into(),
            reason: "off".into(),
        },
        ProjectEvent::StepDeprovisioned {
            step: "webhook".into(),
        },
        ProjectEvent::DeprovisionFailed {
            step: "database".into(),
            attempt: 1,
            error: "busy".into(),
            permanent: true,
            retry_in_ms: None,
        },
        ProjectEvent::DeletionFailed {
            step: "database".into(),
            reason: "busy".into(),
        },
        ProjectEvent::DatabasePasswordRotated {
            step: "database".into(),
            key_id: "2027-01".into(),
        },
        ProjectEvent::ProjectDeleted,
    ]);
    for (i, event) in history.iter().enumerate() {
        let record = recorded(event, i64::try_from(i).unwrap() + 1);
        assert_eq!(ProjectEvent::from_recorded(&record).as_ref(), Some(event));
    }
    assert_eq!(
        ProjectEvent::ProjectReady.to_new_event().event_type,
        "ProjectReady"
    );
    assert_eq!(ProjectEvent::ProjectReady.to_new_event().data, json!({}));
    assert_eq!(
        ProjectEvent::StepStarted {
            step: "database".into(),
            attempt: 2
        }
        .to_new_event()
        .data,
        json!({ "step": "database", "attempt": 2 })
    );
}

#[test]
fn fold_over_recorded_events_matches_applying_them() {
    let history = ready();
    let records: Vec<RecordedEvent> = history
        .iter()
        .enumerate()
        .map(|(i, e)| recorded(e, i64::try_from(i).unwrap() + 1))
        .collect();
    let project = Project::fold(Uuid::from_u128(1), &records);
    assert!(project.exists());
    assert_eq!(project.id, Uuid::from_u128(1));
    assert_eq!(project.version, u64::try_from(history.len()).unwrap());
    assert_eq!(project.status, ProjectStatus::Ready);
    assert_eq!(project.owner_id, Uuid::from_u128(7));
    assert_eq!(project.name, "billing");
    assert!(project.created_at.is_some());
    assert!(!Project::fold(Uuid::nil(), &[]).exists());
    assert_eq!(
        StreamId::project(Uuid::nil()).as_str(),
        format!("project-{}", Uuid::nil())
    );
}
