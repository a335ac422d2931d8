"""What kc_tasks knows of a payment: the inbox of provider events, what became of their tasks,
reconciliation with the providers' APIs, redaction of old bodies, a payment's story."""
