-- Event times fall between the year 2000 and a day after this build started: anything else is a unit or
-- parsing error (seconds for milliseconds, a default of 0) that would corrupt the time split. The bounds are
-- constants, so every row is compared as a plain integer. Checks the events this build added.
{{ config(where='__built_this_run__') }}

select events.session_id, events.event_epoch_ms, loads.etl_id
from (select * from {{ get_where_subquery(ref('stg_browsing_events')) }}) as events
left join {{ source('coveo', 'loads') }} as loads  -- names the load of each event found
    on events.api_key = loads.api_key and events.etl_timestamp = loads.etl_timestamp
where events.event_epoch_ms is null
   or events.event_epoch_ms < 946684800000
   or events.event_epoch_ms > {{ ((run_started_at.timestamp() + 86400) * 1000) | int }}
