-- Event times fall between the year 2000 and tomorrow: anything else is a unit or parsing error
-- (seconds for milliseconds, a default of 0) that would corrupt the time split.
with events as (

    select * from {{ ref('stg_browsing_events') }}

)

select session_id, event_epoch_ms, etl_id
from events
where event_epoch_ms is null
   or event_epoch_ms < 946684800000
   or event_at > {{ dbt.dateadd('day', 1, dbt.current_timestamp()) }}
