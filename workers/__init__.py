"""Celery app and tasks (thin: they call dicom_wm)."""
