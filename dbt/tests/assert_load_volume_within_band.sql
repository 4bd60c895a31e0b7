-- The newest load of each organisation is within a band around the median of its earlier loads:
-- a load ten times smaller than usual is a broken export, not a quiet day.
{{ config(severity='warn') }}

with loads as (

    select * from {{ source('coveo', 'loads') }} where events > 0

),

ranked as (

    select
        api_key,
        etl_id,
        events,
        row_number() over (partition by api_key order by etl_timestamp desc) as recency
    from loads

),

history as (

    select api_key, median(events) as typical_events, count(*) as earlier_loads
    from ranked
    where recency > 1
    group by api_key

)

select ranked.api_key, ranked.etl_id, ranked.events, history.typical_events, history.earlier_loads
from ranked
inner join history on ranked.api_key = history.api_key
where ranked.recency = 1
  and (ranked.events < {{ var('load_volume_low', 0.5) }} * history.typical_events
       or ranked.events > {{ var('load_volume_high', 2.0) }} * history.typical_events)
