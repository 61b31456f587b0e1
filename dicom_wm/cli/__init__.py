"""The ``dicom-wm`` admin CLI (typer + rich); entry point :func:`dicom_wm.cli.app.main`."""
