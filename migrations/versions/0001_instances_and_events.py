"""instances and events (with the append-only guard on events)

Revision ID: 0001
Revises:
Create Date: 2026-11-28 16:53:51
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('instances',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('study_id', sa.String(length=16), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('referring_physician_name', sa.String(length=324), nullable=True),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('specific_character_set', sa.String(length=128), nullable=True),
    sa.Column('calling_ae', sa.String(length=16), nullable=True),
    sa.Column('called_ae', sa.String(length=16), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('received_size', sa.BigInteger(), nullable=False),
    sa.Column('received_sha256', sa.String(length=64), nullable=False),
    sa.Column('spool_path', sa.Text(), nullable=True),
    sa.Column('archive_path', sa.Text(), nullable=True),
    sa.Column('stored_transfer_syntax_uid', sa.String(length=64), nullable=True),
    sa.Column('stored_size', sa.BigInteger(), nullable=True),
    sa.Column('stored_sha256', sa.String(length=64), nullable=True),
    sa.Column('state', sa.Enum('RECEIVED', 'QUEUED', 'WATERMARKING', 'WATERMARKED', 'FAILED', 'SKIPPED', name='instancestate', native_enum=False, length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('key_id', sa.String(length=32), nullable=True),
    sa.Column('record_uuid', sa.String(length=36), nullable=True),
    sa.Column('original_sample_sha256', sa.String(length=64), nullable=True),
    sa.Column('engine_version', sa.String(length=32), nullable=True),
    sa.Column('predictor', sa.String(length=64), nullable=True),
    sa.Column('predictor_version', sa.String(length=32), nullable=True),
    sa.Column('model_sha256', sa.String(length=64), nullable=True),
    sa.Column('payload_bits', sa.BigInteger(), nullable=True),
    sa.Column('capacity_bits', sa.BigInteger(), nullable=True),
    sa.Column('psnr_db', sa.Float(), nullable=True),
    sa.Column('max_abs_delta', sa.Integer(), nullable=True),
    sa.Column('lossy_source', sa.Boolean(), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid', 'version', name='uq_instances_sop_version')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_is_current'), ['is_current'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_received_sha256'), ['received_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_record_uuid'), ['record_uuid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_series_instance_uid'), ['series_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_sop_instance_uid'), ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_state'), ['state'], unique=False)
        batch_op.create_index('ix_instances_state_updated', ['state', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_study_date'), ['study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index('ix_instances_study_series', ['study_instance_uid', 'series_instance_uid'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=True),
    sa.Column('instance_id', sa.Integer(), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_sop_instance_uid'), ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_time'), ['time'], unique=False)

    _create_append_only_guard()



def downgrade() -> None:
    _drop_append_only_guard()
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_time'))
        batch_op.drop_index(batch_op.f('ix_events_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_events_kind'))
        batch_op.drop_index(batch_op.f('ix_events_instance_id'))

    op.drop_table('events')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_study_series')
        batch_op.drop_index(batch_op.f('ix_instances_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_study_date'))
        batch_op.drop_index('ix_instances_state_updated')
        batch_op.drop_index(batch_op.f('ix_instances_state'))
        batch_op.drop_index(batch_op.f('ix_instances_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_series_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_record_uuid'))
        batch_op.drop_index(batch_op.f('ix_instances_received_sha256'))
        batch_op.drop_index(batch_op.f('ix_instances_patient_id'))
        batch_op.drop_index(batch_op.f('ix_instances_is_current'))
        batch_op.drop_index(batch_op.f('ix_instances_accession_number'))

    op.drop_table('instances')


# The events table is an audit log: the database itself refuses UPDATE and
# DELETE on it (DROP TABLE, i.e. a downgrade, still works).

_MESSAGE = "events is append-only"


def _create_append_only_guard() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER events_no_{verb.lower()} BEFORE {verb} ON events "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION events_append_only()"
        )


def _drop_append_only_guard() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS events_append_only()")
