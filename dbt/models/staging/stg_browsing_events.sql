{{ config(materialized='incremental') }}
{%- set keys = ['session_id_hash', 'event_type', 'product_action', 'product_sku_hash',
                'server_timestamp_epoch_ms', 'hashed_url'] %}

with source as (

    select * from {{ source('coveo', 'events_raw') }}
    {% if is_incremental() %}
    -- only the loads that arrived since the last build: history is never re-read
    where etl_timestamp > (select coalesce(max(etl_timestamp), -1) from {{ this }})
    {% endif %}

),

-- each event's JSON is parsed once, not once per field
extracted as (

    select etl_id, etl_timestamp, api_key, {{ json_fields('raw_data', keys) }} as fields
    from source

),

parsed as (

    select
        etl_id,
        etl_timestamp,
        api_key,
        {{ json_field('fields', keys, 'session_id_hash') }} as session_id,
        {{ json_field('fields', keys, 'event_type') }} as event_type,
        nullif(lower(trim({{ json_field('fields', keys, 'product_action') }})), '') as product_action,
        nullif(lower(trim({{ json_field('fields', keys, 'product_sku_hash') }})), '') as product_sku,
        cast({{ json_field('fields', keys, 'server_timestamp_epoch_ms') }} as bigint) as event_epoch_ms,
        {{ json_field('fields', keys, 'hashed_url') }} as hashed_url
    from extracted

),

-- The log is append-only, so the same event loaded twice appears twice: keep it once, with its first load.
-- (A grouping, not a window: it does not carry every row's payload through a sort.)
deduplicated as (

    select
        min_by(etl_id, etl_timestamp) as etl_id,
        min(etl_timestamp) as etl_timestamp,
        api_key,
        session_id,
        event_type,
        product_action,
        product_sku,
        event_epoch_ms,
        hashed_url
    from parsed
    group by api_key, session_id, event_type, product_action, product_sku, event_epoch_ms, hashed_url

),

{% if is_incremental() %}
-- and an event already built from an earlier load is not built again
new_events as (

    select *
    from deduplicated
    where not exists (
        select 1
        from {{ this }} as built
        where built.api_key = deduplicated.api_key
          and built.session_id = deduplicated.session_id
          and built.event_epoch_ms = deduplicated.event_epoch_ms
          and built.event_type is not distinct from deduplicated.event_type
          and built.product_action is not distinct from deduplicated.product_action
          and built.product_sku is not distinct from deduplicated.product_sku
          and built.hashed_url is not distinct from deduplicated.hashed_url
    )

),
{% else %}
new_events as (

    select * from deduplicated

),
{% endif %}

final as (

    select
        *,
        {{ epoch_ms_to_timestamp('event_epoch_ms') }} as event_at,
        cast({{ epoch_ms_to_timestamp('event_epoch_ms') }} as date) as event_date
    from new_events

)

select * from final
