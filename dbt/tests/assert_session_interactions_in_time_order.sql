-- Every session's interactions are listed in time order (the mart's ordered aggregation is right). Checks the
-- sessions this build added or rebuilt.
with sessions as (

    select * from {{ ref('sessions') }} where {{ built_this_run() }}

)

select session_id, api_key, timestamps
from sessions
where timestamps <> {{ sorted_array('timestamps') }}
