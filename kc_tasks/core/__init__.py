"""What every part uses: names, settings, errors, logs, metrics, the task's payload, how a task is
sent, publishing with confirms. Imports nothing else of kc_tasks."""
