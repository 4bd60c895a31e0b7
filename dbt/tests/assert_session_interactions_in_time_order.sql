-- Every session's interactions are listed in time order (the mart's ordered aggregation is right).
with sessions as (

    select * from {{ ref('sessions') }}

)

select session_id, api_key, timestamps
from sessions
where timestamps <> {{ sorted_array('timestamps') }}
