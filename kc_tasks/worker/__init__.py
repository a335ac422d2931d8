"""The worker's path: the tasks, the batches of purchases, making and revoking purchases,
waiting out a database outage, the consumer's hooks (`celery -A kc_tasks worker`)."""
